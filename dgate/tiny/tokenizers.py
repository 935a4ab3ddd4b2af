"""The offline tokenizers every tiny pipeline (and the full-size ones) uses: a byte-level BPE CLIP
tokenizer and a Unigram T5 tokenizer, both derived from one small word list."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from transformers import CLIPTokenizer, T5Tokenizer

CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"

# The corpus both tokenizers are derived from: common English and prompt words. Words outside it
# still tokenize (CLIP falls back to bytes, T5 to single characters or <unk>).
WORDS = """
a an the of and or in on at to with from by for as is are was be it this that there here his her
their its my your our one two three four five many some all no not very more most few other new old
photo photograph picture painting drawing sketch illustration portrait landscape render art artwork
style realistic detailed high quality resolution lighting light dark shadow color colors colorful
red orange yellow green blue purple pink brown black white gray gold silver bright soft warm cold
cat dog fox bird horse cow sheep lion tiger bear wolf rabbit mouse fish whale owl eagle duck frog
man woman person people child girl boy face eyes hair hand head body smile king queen knight robot
house city street road bridge tower castle building room window door garden park forest tree trees
flower flowers grass leaf mountain mountains river lake sea ocean beach island sky cloud clouds sun
moon star stars night day morning evening sunset sunrise rain snow storm fire water ice stone wood
car train boat ship plane bicycle book table chair cup bottle apple cake bread coffee food fruit
big small large little tall long short round beautiful cute happy sad angry calm quiet wild ancient
modern future futuristic fantasy magic dream space planet galaxy astronaut riding sitting standing
running flying walking sleeping playing eating looking holding wearing under over above behind near
cinematic closeup close up wide angle view camera lens sharp focus blur bokeh studio film vintage
oil watercolor digital anime cartoon pixel minimal abstract surreal epic dramatic glowing neon
"""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte -> printable character map, in its canonical order (printable bytes first)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs, shifted = bs[:], 0
    for b in range(256):
        if b not in bs:  # control and whitespace bytes are shifted past 255 so each byte is a visible char
            bs.append(b)
            cs.append(256 + shifted)
            shifted += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def _learn_bpe_merges(words: list[str]) -> list[tuple[str, str]]:
    """Plain BPE training until every word is one token, ties broken by the smallest pair (deterministic)."""
    byte_char = _bytes_to_unicode()
    corpus: list[list[str]] = []
    for word in words:
        symbols = [byte_char[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"  # CLIP marks the end of a word on its last symbol
        corpus.append(symbols)
    merges: list[tuple[str, str]] = []
    while True:
        pairs = Counter(p for symbols in corpus for p in zip(symbols, symbols[1:], strict=False))
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for i, symbols in enumerate(corpus):
            out, j = [], 0
            while j < len(symbols):
                if j + 1 < len(symbols) and (symbols[j], symbols[j + 1]) == best:
                    out.append(symbols[j] + symbols[j + 1])
                    j += 2
                else:
                    out.append(symbols[j])
                    j += 1
            corpus[i] = out
    return merges


def build_clip_tokenizer(pad_token: str = CLIP_EOS) -> CLIPTokenizer:
    """A byte-level BPE CLIP tokenizer laid out like OpenAI's: bytes, bytes+</w>, merges, specials.

    `pad_token` is <|endoftext|> as in SD 1.x and every first CLIP tokenizer; SDXL's and SD3's second
    (OpenCLIP) tokenizer pads with "!", which is byte token 0 here as in the real vocabulary.
    """
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    merges = _learn_bpe_merges(WORDS.split())
    tokens += [a + b for a, b in merges] + [CLIP_BOS, CLIP_EOS]
    vocab: dict[str, int] = {}
    for tok in tokens:  # two merges can spell the same token; it gets one id
        vocab.setdefault(tok, len(vocab))
    if pad_token not in vocab:
        raise ValueError(f"pad token {pad_token!r} is not a single token of the vocabulary")
    # The 77-token window every SD text encoder has.
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]  # transformers accepts pairs; its annotation says strings
        unk_token=CLIP_EOS,
        bos_token=CLIP_BOS,
        eos_token=CLIP_EOS,
        pad_token=pad_token,
        model_max_length=77,
    )


def build_t5_tokenizer() -> T5Tokenizer:
    """A Unigram T5 tokenizer: T5's special ids (<pad>=0, </s>=1, <unk>=2), whole words, then characters."""
    chars = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -4.0)]
    # Scores are log-probabilities: whole words beat spelling them out, so known words are one piece.
    seen = {p for p, _ in pieces}
    for piece, score in (
        [("▁" + w, -3.0) for w in WORDS.split()]
        + [(w, -3.5) for w in WORDS.split()]
        + [("▁" + c, -6.0) for c in chars]
        + [(c, -6.5) for c in chars]
    ):
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, score))
    # PixArt pads prompts to max_sequence_length=300; T5's relative positions allow any length.
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def write_bpe_files(tokenizer: CLIPTokenizer, tok_dir: Path) -> None:
    """Add vocab.json + merges.txt next to tokenizer.json.

    transformers 5 saves only tokenizer.json; the classic files keep the folder loadable by transformers
    4.x's slow CLIPTokenizer (which diffusers picks from model_index.json) and by other BPE readers.
    """
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    (tok_dir / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False) + "\n", "utf-8")
    merges = ["#version: 0.2"] + [" ".join(pair) for pair in model["merges"]]
    (tok_dir / "merges.txt").write_text("\n".join(merges) + "\n", "utf-8")
