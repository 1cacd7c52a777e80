"""GIRL: generative job recommendations with a large language model (Zheng et al., 2023), from scratch."""
