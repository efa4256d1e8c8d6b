"""Write a tiny random Llama model to a GGUF file the way llama.cpp's converter does (float32 tensors).

Tensor names are llama.cpp's (``token_embd``, ``blk.N.attn_q``, …), the q/k rows are permuted as
``convert_hf_to_gguf.py``'s ``LlamaModel.permute`` does (transformers' GGUF loader un-permutes them),
and the tokenizer is a byte-level (``gpt2``) BPE vocabulary: the 256 byte symbols, a few merges and
an ``<|endoftext|>`` control token.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

MERGES = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n", "o n", "e r", "Ġ s"]
EOT = "<|endoftext|>"


def byte_level_vocab() -> tuple[list[str], list[str]]:
    """(tokens, merges): byte symbols in byte order, the merged tokens, then the end-of-text token."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = bytes_to_unicode()
    tokens = [symbols[b] for b in range(256)] + ["".join(m.split(" ")) for m in MERGES] + [EOT]
    return tokens, list(MERGES)


def llama_permute(w: torch.Tensor, n_head: int, n_head_kv: int) -> torch.Tensor:
    """llama.cpp's q/k row permutation (rotary halves interleaved), w: (n_head·head_dim, hidden)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tiny_llama(vocab_size: int, seed: int = 0):
    """A random LlamaForCausalLM (GQA 4q/2kv heads, 2 blocks), weights scaled up so pruning shows."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=8, intermediate_size=48, num_hidden_layers=2, max_position_embeddings=128,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                      bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:  # RMSNorm weights: random, not all ones, so a wrong norm mapping shows
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.3)
    return model


def write_llama_gguf(model, path: str | Path, tokens: list[str], merges: list[str], name: str = "tiny-llama") -> Path:
    """Write ``model`` (LlamaForCausalLM) and the byte-level vocabulary to ``path`` as a float32 GGUF."""
    import gguf

    cfg = model.config
    path = Path(path)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_theta if hasattr(cfg, "rope_theta") else cfg.rope_parameters["rope_theta"])
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t == EOT else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index(EOT))
    w.add_eos_token_id(tokens.index(EOT))

    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for i in range(cfg.num_hidden_layers):
        for hf, gg in per_layer.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    for hf_name, gguf_name in names.items():
        t = sd[hf_name]
        if gguf_name.endswith("attn_q.weight"):
            t = llama_permute(t, nh, nh)
        elif gguf_name.endswith("attn_k.weight"):
            t = llama_permute(t, nh, nkv)
        w.add_tensor(gguf_name, np.ascontiguousarray(t.numpy(), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def make_tiny_gguf(path: str | Path, seed: int = 0):
    """(model, path): a tiny random Llama and the GGUF written from it."""
    tokens, merges = byte_level_vocab()
    model = tiny_llama(len(tokens), seed)
    return model, write_llama_gguf(model, path, tokens, merges)


def write_header_gguf(path: str | Path, arch: str, name: str = "tiny") -> Path:
    """A GGUF whose header says ``arch`` (a few hyper-parameters, the byte-level vocabulary, one tensor):
    enough for transformers to read its config, not a loadable model."""
    import gguf

    tokens, merges = byte_level_vocab()
    path = Path(path)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_tensor("token_embd.weight", np.zeros((len(tokens), 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tiny_gemma3(vocab_size: int, seed: int = 0):
    """A random Gemma3ForCausalLM (text backbone; GQA 4q/2kv heads, 2 sliding-window blocks, tied
    embeddings), every weight and norm random so that a wrong mapping shows."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(vocab_size=vocab_size, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                           head_dim=8, intermediate_size=48, num_hidden_layers=2, max_position_embeddings=128,
                           sliding_window=16, bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1,
                           pad_token_id=vocab_size - 1)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:  # Gemma norms scale by (1 + w)
                p.normal_(0.0, 0.2)
            else:
                p.normal_(0.0, 0.3)
    return model


def write_gemma3_gguf(model, path: str | Path, tokens: list[str], merges: list[str], name: str = "tiny-gemma3") -> Path:
    """Write ``model`` (Gemma3ForCausalLM, tied embeddings) as a float32 GGUF the way llama.cpp's converter
    does: tensor names from the ``gguf`` package's own name map, norm weights stored as 1 + w."""
    import gguf

    cfg = model.config
    path = Path(path)
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_name(name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["full_attention"]["rope_theta"])
    w.add_sliding_window(cfg.sliding_window)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t == EOT else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index(EOT))
    w.add_eos_token_id(tokens.index(EOT))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, cfg.num_hidden_layers)
    for hf_name, t in model.state_dict().items():
        if hf_name == "lm_head.weight":
            continue  # tied: llama.cpp writes no output.weight
        t = t.detach().float()
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight",))
        if gguf_name.endswith("norm.weight"):
            t = t + 1
        w.add_tensor(gguf_name, np.ascontiguousarray(t.numpy(), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
