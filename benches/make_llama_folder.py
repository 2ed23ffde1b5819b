"""A Hugging Face model folder with a preset's shapes and random weights, a word-level
tokenizer covering its vocabulary, and a text data file of random words: the input of
`benches/train_vs_reference.sh`, which times `graft train` on it. Needs transformers
and tokenizers (the GPU machine has both); runs offline.

    python3 benches/make_llama_folder.py OUT_DIR [--preset llama-1b] [--tokens 400000]
"""

import argparse
import json
import os
import random

PRESETS = {
    # Llama-3.2-1B's shapes.
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                     max_position_embeddings=131072, rope_theta=500000.0,
                     tie_word_embeddings=True,
                     rope_scaling={"rope_type": "llama3", "factor": 32.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 8192}),
    # Llama-3.1-8B's shapes (untied head).
    "llama-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                     max_position_embeddings=131072, rope_theta=500000.0,
                     tie_word_embeddings=False,
                     rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 8192}),
    # SmolLM2-135M's shapes.
    "smol-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                      max_position_embeddings=8192, rope_theta=100000.0,
                      tie_word_embeddings=True),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--preset", default="llama-1b", choices=sorted(PRESETS))
    parser.add_argument("--tokens", type=int, default=400_000,
                        help="words in the data file (one token each)")
    args = parser.parse_args()

    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM

    shapes = PRESETS[args.preset]
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    config = LlamaConfig(**shapes, bos_token_id=0, eos_token_id=1, torch_dtype="bfloat16")
    # Built in f32 on the GPU, then cast: 32 GB for the 8B preset, which an H200 holds.
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(args.out, safe_serialization=True)

    vocab = {f"t{i}": i for i in range(shapes["vocab_size"])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t2"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(os.path.join(args.out, "tokenizer.json"))
    with open(os.path.join(args.out, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "t0", "eos_token": "t1", "unk_token": "t2"}, f)

    rng = random.Random(0)
    data = os.path.join(args.out, "train.jsonl")
    with open(data, "w") as f:
        written = 0
        while written < args.tokens:
            words = [f"t{rng.randrange(3, shapes['vocab_size'])}" for _ in range(4096)]
            f.write(json.dumps({"text": " ".join(words)}) + "\n")
            written += len(words)
    print(json.dumps({"folder": args.out, "data": data, "preset": args.preset}))


if __name__ == "__main__":
    main()
