"""The LM engine: a decoder-only transformer that loads public weights, and nothing about jobs.

    model.py        Config, Transformer (G), RewardModel (U): pure architecture
    hf.py           Hugging Face config.json and tensor names <-> ours, one explicit map per family
    checkpoint.py   load_model / save_model: Hugging Face folders on disk, atomic; the optimizer's state
    hub.py          a hub id downloaded into a local cache (standard library only)
    tokenizer.py    text <-> ids through a tokenizer.json
    sampling.py     batched KV-cache generation, rollouts and their log-probs
"""
