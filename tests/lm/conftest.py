"""Tiny random OPT and Llama (GQA) models with random biases and norms, and a tiny byte-level tokenizer, for fast LM tests."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(1)


def tiny_opt_config(**kw):
    from transformers import OPTConfig

    base = dict(vocab_size=300, hidden_size=32, num_attention_heads=4, ffn_dim=64, num_hidden_layers=2,
                max_position_embeddings=128, word_embed_proj_dim=32, attn_implementation="eager")
    base.update(kw)
    return OPTConfig(**base)


def tiny_llama_config(**kw):
    from transformers import LlamaConfig

    base = dict(vocab_size=300, hidden_size=48, num_attention_heads=6, num_key_value_heads=3, head_dim=8,
                intermediate_size=64, num_hidden_layers=2, max_position_embeddings=128,
                attn_implementation="eager")
    base.update(kw)
    return LlamaConfig(**base)


BIAS_STD = 0.2  # random biases: a slicer that keeps the wrong bias rows changes the logits
NORM_STD = 0.3  # random LayerNorm / RMSNorm weights (and LayerNorm biases): a wrong norm slice shows


def make_model(config, seed: int = 0):
    """A random model of ``config`` whose every parameter is non-trivial.

    HF initialises biases to 0 and norm weights to 1 (Gemma's ``1 + w`` norms to 0): with those, a
    slicer copying the wrong bias or norm entries still gives the right logits. Here every 1-D
    parameter (a bias or a norm weight: the tiny families have no other) gets a random offset, and
    the 2-D weights other than the embeddings are scaled by 5 so that pruning changes the function.
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "embed" not in name:
                p.mul_(5.0)
            elif p.ndim == 1:
                p.add_((BIAS_STD if name.endswith("bias") and "norm" not in name else NORM_STD) * torch.randn_like(p))
    assert_nontrivial(model)
    return model


def assert_nontrivial(model) -> None:
    """No bias is all zeros and no norm weight all ones or all zeros (a guard on :func:`make_model`)."""
    for name, p in model.named_parameters():
        if p.ndim == 1:
            assert not (torch.all(p == 0) or torch.all(p == 1)), f"{name} is trivial"


@pytest.fixture(params=["opt", "llama", "llama-bias"])
def tiny_model(request):
    """Tiny OPT, Llama (GQA), and Llama with q/k/v/o and MLP biases (random, as every 1-D parameter)."""
    cfg = {"opt": tiny_opt_config, "llama": tiny_llama_config,
           "llama-bias": lambda: tiny_llama_config(attention_bias=True, mlp_bias=True)}[request.param]()
    return make_model(cfg)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    """A byte-level BPE tokenizer (vocab ≤ 300) trained on a few sentences, saved as an HF folder."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    text = ["The quick brown fox jumps over the lazy dog. " * 5, "Anarchism is a political philosophy. " * 5]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(text, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                  bos_token="<|endoftext|>", pad_token="<|endoftext|>")
    path = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A saved tiny Llama (GQA) with the tiny tokenizer: a local model folder for run_lm / CLI."""
    return saved_model_dir(tmp_path_factory.mktemp("tiny_llama"), tiny_llama_config(max_position_embeddings=256),
                           tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_opt_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A saved tiny OPT with the tiny tokenizer: a local model folder for run_lm / CLI."""
    return saved_model_dir(tmp_path_factory.mktemp("tiny_opt"), tiny_opt_config(max_position_embeddings=256),
                           tiny_tokenizer_dir)


def saved_model_dir(path, config, tokenizer_dir):
    """A random model of ``config`` saved to ``path`` with the tokenizer files of ``tokenizer_dir``."""
    import shutil

    make_model(config).save_pretrained(path)
    for f in os.listdir(tokenizer_dir):
        shutil.copy(os.path.join(tokenizer_dir, f), path)
    return path


def zero_out_groups(model, kept, adapter=None):
    """Prune without slicing: zero the consumer columns of the groups not kept.

    kept: per block, {"attn": kept group indices, "mlp": kept neuron indices}, in ``adapter``'s attention unit
    (None: ``get_adapter(model)``, kv-group).
    """
    from osscar.lm.adapters import get_adapter

    a = adapter or get_adapter(model)
    for i, layer in enumerate(a.layers(model)):
        for part in ("attn", "mlp"):
            W = a.consumer(layer, part).weight.data
            s = a.group_size(part)
            mask = torch.zeros(W.shape[1] // s, dtype=torch.bool)
            mask[kept[i][part]] = True
            W[:, ~mask.repeat_interleave(s)] = 0


@pytest.fixture
def solver_calls(monkeypatch) -> list[int]:
    """Counts every solver call (``PruningMethod.prune``, which every registered method inherits), independently
    of the code's own counts: the kept count ``k`` of each call, in order."""
    from osscar.method import PruningMethod

    calls: list[int] = []
    original = PruningMethod.prune

    def counted(self, problem):
        calls.append(problem.k)
        return original(self, problem)

    monkeypatch.setattr(PruningMethod, "prune", counted)
    return calls
