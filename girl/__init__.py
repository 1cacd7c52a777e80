"""GIRL: generative job recommendations with a large language model (Zheng et al., 2023), from scratch.

Layers, imports only going down:

    train_*.py, generate.py   the stages (scripts); girl/cli.py is what they share
    girl/                     the method: template, data, losses, reward (U's input), ppo, evaluation, training,
                              recommend (the matcher M, stage 4), ranking (its metrics)
    girl/lm/                  the LM engine: model, hf, checkpoint, hub, tokenizer, sampling
    girl/files.py             atomic files, under every layer

    girl/market/              the synthetic job market: a test bench the method never imports
"""
