"""Text <-> token ids through a Hugging Face tokenizer.json, read by the `tokenizers` package.

Special tokens are never added behind the caller's back: `encode` returns the text's tokens alone and
the prompt template decides where BOS and EOS go, the same way for every family.
"""

import hashlib
import json
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from girl.files import CheckpointError, read_json, write_json
from girl.lm import hub


def _token_text(value):
    # tokenizer_config.json writes a special token either as a string or as {"content": ..., ...}
    return value.get("content") if isinstance(value, dict) else value


SPECIAL = {"pad": "<|pad|>", "bos": "<|bos|>", "eos": "<|eos|>"}
VOCAB_KEY = "girl_tokenizer_vocab"  # config.json: the vocabulary the model's embedding rows were trained on (save_model)


class Tokenizer:
    def __init__(self, tokenizer: HFTokenizer, bos_token=None, eos_token=None, pad_token=None, source="tokenizer"):
        self.tk = tokenizer
        self.source = source  # the tokenizer.json it came from, for error messages
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        for role, token in (("bos", bos_token), ("eos", eos_token), ("pad", pad_token)):
            if token is not None and tokenizer.token_to_id(token) is None:
                raise CheckpointError(f"{source}: {role} token {token!r} is not in the tokenizer's vocabulary")

    @classmethod
    def train(cls, texts, vocab_size: int) -> "Tokenizer":
        """A byte-level BPE tokenizer (GPT-2's scheme) learned from texts, with pad, bos and eos tokens.

        Byte-level: any text encodes, Chinese included (a character is 3 bytes until merges join them).
        """
        tk = HFTokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL.values()),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tk.train_from_iterator(texts, trainer)
        return cls(tk, SPECIAL["bos"], SPECIAL["eos"], SPECIAL["pad"], source="trained")

    @classmethod
    def from_pretrained(cls, name_or_path) -> "Tokenizer":
        folder = hub.resolve(name_or_path)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise CheckpointError(f"{folder}: no tokenizer.json; save one with tokenizers' Tokenizer.save()")
        try:
            tk = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on a malformed file
            raise CheckpointError(f"{path}: cannot be read as a tokenizer ({e})") from None
        special = {}
        config = folder / "tokenizer_config.json"
        if config.is_file():
            cfg = read_json(config)
            special = {k: _token_text(cfg.get(f"{k}_token")) for k in ("bos", "eos", "pad")}
        model_config = folder / "config.json"
        ids = read_json(model_config) if model_config.is_file() else {}
        ids = ids if isinstance(ids, dict) else {}  # a config.json that is no object: load_model says so
        for k in ("bos", "eos", "pad"):  # e.g. gpt2 names its special tokens only by id, in config.json
            i = ids.get(f"{k}_token_id")
            i = i[0] if isinstance(i, list) and i else i
            if special.get(k) is None and isinstance(i, int):
                special[k] = tk.id_to_token(i)
        tok = cls(tk, special.get("bos"), special.get("eos"), special.get("pad"), source=str(path))
        recorded = ids.get(VOCAB_KEY)
        if recorded is not None and recorded != tok.vocab_digest:
            raise CheckpointError(
                f"{path}: not the tokenizer the weights beside it were trained with (config.json records "
                f"vocabulary {recorded[:12]}, this tokenizer.json has {tok.vocab_digest[:12]}): its ids would index "
                "the wrong embedding rows; put back the tokenizer.json saved with the weights")
        return tok

    def save_pretrained(self, out_dir):
        """tokenizer.json + tokenizer_config.json, which transformers' AutoTokenizer also reads."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / ".tokenizer.json.tmp"
        self.tk.save(str(tmp))
        tmp.replace(out / "tokenizer.json")
        write_json(out / "tokenizer_config.json", {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token, "eos_token": self.eos_token, "pad_token": self.pad_token,
        })

    def _id(self, token):
        return None if token is None else self.tk.token_to_id(token)

    @property
    def bos_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def eos_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def pad_id(self) -> int | None:
        return self._id(self.pad_token)

    @property
    def pad_or_eos_id(self) -> int:
        """What batches are padded with: the pad token, or EOS when there is none (as for GPT-2 and Llama).
        Safe because every mask and label is built from lengths, never by comparing ids with this one."""
        return self.pad_id if self.pad_id is not None else self.eos_id

    def same_as(self, other: "Tokenizer") -> bool:
        """Whether both turn text into the same ids: then one model can read the other's tokens."""
        return self.tk.get_vocab(with_added_tokens=True) == other.tk.get_vocab(with_added_tokens=True)

    @property
    def vocab_digest(self) -> str:
        """sha256 of the token -> id table (special tokens included): which token each embedding row stands for.
        save_model records it in config.json, and from_pretrained checks the tokenizer beside it."""
        vocab = sorted(self.tk.get_vocab(with_added_tokens=True).items())
        return hashlib.sha256(json.dumps(vocab).encode("ascii")).hexdigest()  # escaped: any token hashes

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tk.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tk.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def check_fits(self, config, where: str = "the model"):
        """Every id the tokenizer can produce must index the model's embedding table (it may be larger)."""
        largest = max(self.tk.get_vocab(with_added_tokens=True).values())
        if largest >= config.vocab_size:
            raise CheckpointError(
                f"{self.source}: tokenizer produces ids up to {largest}, but {where} has only "
                f"{config.vocab_size} embeddings: the tokenizer does not belong to this model; load both "
                "from the same folder"
            )
