"""Write a tiny random-weight llama-architecture GGUF model that llama.cpp's server loads and runs.

Run with the Python of a venv that has llama.cpp's own GGUF writer (``gguf``, vendored in its sources):

    python tiny_model.py VOCAB.gguf OUT.gguf [--template FILE] [--seed 0]

The tokenizer (every ``tokenizer.*`` key) comes from one of llama.cpp's vocab-only files
(``models/ggml-vocab-*.gguf``), so text is tokenized as a real model's would be; ``--template`` puts a
chat template of our choosing in ``tokenizer.chat_template`` (else the vocab file's own, if any). The
weights are random: what the model says is nonsense, but shaped so that it reads as words and does not
end by itself. Every token embedding has a constant 1 in its first dimension, and the output layer's
first column holds a per-token bias: control, byte and unknown tokens far below everything (never
sampled), end-of-generation tokens too (generation ends at the token limit, a stop string or a grammar),
lowercase word pieces above the rest.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import gguf
import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter

LAYERS, WIDTH, HEADS, FEED_FORWARD, CONTEXT = 2, 64, 4, 128, 2048
NORMAL = 1  # llama.cpp's token type for an ordinary token (control 3, byte 6, unknown 2, ...)
ENDS = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>", "<end_of_turn>", "<|end|>")
WORD_PIECE = re.compile(r"^[\u2581\u0120]?[a-z]{2,}$")  # SentencePiece "▁" or byte-level "Ġ" word start


def tokenizer(reader: GGUFReader, writer: GGUFWriter) -> tuple[list[str], list[int]]:
    """Copy the vocab file's tokenizer into the model; its tokens and their types."""
    tokens: list[str] = []
    types: list[int] = []
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        kind = field.types[0]
        value = field.contents()
        if kind == GGUFValueType.ARRAY:
            writer.add_key_value(key, value, kind, sub_type=field.types[-1])
            if key == "tokenizer.ggml.tokens":
                tokens = list(value)
            elif key == "tokenizer.ggml.token_type":
                types = [int(t) for t in value]
        else:
            writer.add_key_value(key, value, kind)
    return tokens, types or [NORMAL] * len(tokens)


def biases(reader: GGUFReader, tokens: list[str], types: list[int]) -> np.ndarray:
    bias = np.zeros(len(tokens), dtype=np.float32)
    for i, (token, kind) in enumerate(zip(tokens, types, strict=True)):
        if kind != NORMAL:
            bias[i] = -30.0
        elif WORD_PIECE.match(token):
            bias[i] = 4.0
    ends = {i for i, t in enumerate(tokens) if t in ENDS}
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"):
        if key in reader.fields:
            ends.add(int(reader.fields[key].contents()))
    bias[sorted(ends)] = -30.0
    return bias


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("vocab", type=Path)
    args.add_argument("out", type=Path)
    args.add_argument("--template", type=Path, help="a chat template (Jinja) for tokenizer.chat_template")
    args.add_argument("--seed", type=int, default=0)
    a = args.parse_args()

    rng = np.random.default_rng(a.seed)
    reader = GGUFReader(a.vocab)
    writer = GGUFWriter(a.out, "llama")
    writer.add_name("tiny-random-llama")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(WIDTH)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FEED_FORWARD)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(WIDTH // HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens, types = tokenizer(reader, writer)
    writer.add_vocab_size(len(tokens))
    if a.template is not None:
        writer.add_chat_template(a.template.read_text(encoding="utf-8"))

    def random(rows: int, columns: int, scale: float) -> np.ndarray:
        return (rng.standard_normal((rows, columns)) * scale).astype(np.float32)

    # numpy (rows, columns) is ggml's {columns, rows}: a weight maps `columns` inputs to `rows` outputs.
    embedding = random(len(tokens), WIDTH, 0.5)
    embedding[:, 0] = 1.0  # the constant channel the output bias rides on
    writer.add_tensor("token_embd.weight", embedding.astype(np.float16))
    for layer in range(LAYERS):
        block = f"blk.{layer}."
        writer.add_tensor(block + "attn_norm.weight", np.ones(WIDTH, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v"):
            writer.add_tensor(block + name + ".weight", random(WIDTH, WIDTH, 0.1).astype(np.float16))
        for name, inputs in (("attn_output", WIDTH), ("ffn_down", FEED_FORWARD)):
            weight = random(WIDTH, inputs, 0.02)
            weight[0, :] = 0.0  # nothing is added to the constant channel on its way through
            writer.add_tensor(block + name + ".weight", weight.astype(np.float16))
        writer.add_tensor(block + "ffn_norm.weight", np.ones(WIDTH, dtype=np.float32))
        writer.add_tensor(block + "ffn_gate.weight", random(FEED_FORWARD, WIDTH, 0.1).astype(np.float16))
        writer.add_tensor(block + "ffn_up.weight", random(FEED_FORWARD, WIDTH, 0.1).astype(np.float16))
    writer.add_tensor("output_norm.weight", np.ones(WIDTH, dtype=np.float32))
    # After the final RMS norm the constant channel is 1/rms of the hidden state: about this.
    channel = 1.0 / np.sqrt((1.0 + (WIDTH - 1) * 0.25) / WIDTH)
    output = random(len(tokens), WIDTH, 0.3)
    output[:, 0] = biases(reader, tokens, types) / channel
    writer.add_tensor("output.weight", output.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"{a.out}: {len(tokens)} tokens, {LAYERS} layers of {WIDTH}")


if __name__ == "__main__":
    main()
