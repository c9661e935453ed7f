#!/usr/bin/env python3
"""Write Tessera's tokenizer golden files with the Hugging Face `tokenizers` library (and `sentencepiece`
when installed): one small tokenizer per family, trained here on a synthetic corpus, and reference encodings.

    <out>/tokenizers/<name>/tokenizer.json           the tokenizer as transformers saves it
    <out>/tokenizers/<name>/tokenizer_config.json    bos/eos/unk/pad as transformers 5 writes them
    <out>/tokenizers/<name>/generation_config.json   bos_token_id / eos_token_id (a list where the family has several)
    <out>/tokenizers/<name>/encodings.json           {"texts": [{"text", "ids", "ids_with_special", "decoded",
                                                      "decoded_skip_special"}], "vocab_size", "versions", "notes"}
    <out>/tokenizers/spm/tokenizer.model             a SentencePiece BPE model with byte fallback (Llama 2 /
                                                      Mistral's tokenizer.model format), when sentencepiece imports

Families (names = folders):
    llama3   byte-level BPE, Split(Llama 3's regex, isolated) then ByteLevel(use_regex false), <|begin_of_text|>
             added by the post-processor, <|end_of_text|> and <|eot_id|> special; eos a list in generation_config
    qwen2    byte-level BPE, NFC normalizer, Split(Qwen2's regex: single digits), <|endoftext|>, <|im_start|>,
             <|im_end|> special, no bos
    llama2   SentencePiece-style BPE with byte fallback as transformers converts Llama 2: normalizer
             Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer, <unk> <s> </s> then <0x00>..<0xFF> at ids 0..258
    mistral  the same model in the Metaspace form newer files use (pre_tokenizer Metaspace("▁", prepend_scheme
             "first", split false), no normalizer)

Deterministic: fixed corpus and trainer settings. Run where `tokenizers` and `transformers` are installed:
    python3 make_golden_tokenizers.py --out DIR [--tar FILE.tar.gz]
"""

import argparse
import json
import os
import platform
import random
import sys
import tarfile

import tokenizers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

WORDS = ("the of and to in is was for on that with as by at from this be are or an it not which have but had "
         "model token tokenizer layer attention weight gradient tensor vector matrix sequence position window "
         "rotary frequency scaling export import checkpoint training inference decode encode value key query "
         "café naïve straße über déjà façade 中文 字符 模型 日本語 テキスト привет мир 🙂 🚀 ✓ "
         "don't I'm we'll they've it's you're she'd HELLO World Tessera Llama Qwen Mistral").split()

TEXTS = [
    "Hello world! This is a test.",
    "  leading spaces and\ttabs\n\nnew lines  ",
    "Numbers: 1234567 and 3.14159, the 42nd of 2048.",
    "Unicode: café, naïve, straße, 中文字符, привет 🙂🚀",
    "Contractions: don't, I'm, we'll, they've, IT'S",
    "Decomposed: cafe\u0301 and composed: caf\u00e9",
    "Rare bytes: \u00a7\u00b6 \u2603 \U0001F9EA zzzzqqqq",
    "def f(x):\n    return x ** 2  # code\n",
]

SPECIAL_TEXTS = {
    "llama3": "<|begin_of_text|>Hello<|eot_id|> world<|end_of_text|>",
    "qwen2": "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "llama2": "<s> Hello</s> world",
    "mistral": "<s>[INST] Hello [/INST]</s>",
}


def log(*args):
    print(*args, flush=True)


def corpus():
    """About 3,000 synthetic lines: word salad over WORDS, numbers, punctuation and the test texts themselves."""
    rng = random.Random(20251203)
    lines = []
    for _ in range(3000):
        n = rng.randint(3, 14)
        words = [rng.choice(WORDS) for _ in range(n)]
        if rng.random() < 0.3:
            words.insert(rng.randint(0, n), str(rng.randint(0, 10 ** rng.randint(1, 7))))
        sep = rng.choice([" ", " ", " ", "  ", "\t", "\n"])
        lines.append(sep.join(words) + rng.choice([".", "!", "?", ",", ";", ":", ""]))
    return lines + TEXTS * 20


def train_byte_level(pattern, vocab_size, nfc):
    tok = Tokenizer(models.BPE())
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    return tok


def train_sentencepiece_style(vocab_size, metaspace):
    """BPE with byte fallback in SentencePiece's layout: <unk> <s> </s>, the 256 byte tokens, then the learned pieces."""
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    trainer_tok.train_from_iterator(corpus(), trainer)
    spec = json.loads(trainer_tok.to_str())
    learned = [t for t, _ in sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1]) if t not in ("<unk>", "<s>", "</s>")]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = 3 + b
    for t in learned:
        vocab.setdefault(t, len(vocab))
    spec["model"]["vocab"] = vocab
    spec["model"]["byte_fallback"] = True
    spec["model"]["fuse_unk"] = True
    spec["model"]["unk_token"] = "<unk>"
    spec["added_tokens"] = [
        {"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for i, c in enumerate(["<unk>", "<s>", "</s>"])]
    if metaspace:
        spec["normalizer"] = None
        spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}
        spec["decoder"] = {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    else:
        spec["normalizer"] = {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
        spec["pre_tokenizer"] = None
        spec["decoder"] = {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    return Tokenizer.from_str(json.dumps(spec))


def save(tok, name, out, bos, eos, eos_ids, bos_id, pad, unk, notes):
    folder = os.path.join(out, "tokenizers", name)
    os.makedirs(folder, exist_ok=True)
    saved_by = "tokenizers.Tokenizer.save + hand-written tokenizer_config.json"
    try:
        from transformers import PreTrainedTokenizerFast
        kwargs = {k: v for k, v in dict(bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk).items() if v}
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
        fast.save_pretrained(folder)
        saved_by = "transformers PreTrainedTokenizerFast.save_pretrained"
    except Exception as e:  # keep going with the plain files
        notes.append(f"{name}: PreTrainedTokenizerFast.save_pretrained failed ({e!r})")
        tok.save(os.path.join(folder, "tokenizer.json"))
        with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
            json.dump({k: v for k, v in dict(bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk).items() if v}, f, indent=2)
    gen = {"bos_token_id": bos_id, "eos_token_id": eos_ids if len(eos_ids) > 1 else eos_ids[0]}
    try:
        from transformers import GenerationConfig
        GenerationConfig(**gen).save_pretrained(folder)
    except Exception as e:
        notes.append(f"{name}: GenerationConfig.save_pretrained failed ({e!r}); wrote generation_config.json by hand")
        with open(os.path.join(folder, "generation_config.json"), "w") as f:
            json.dump(gen, f, indent=2)
    # The reference encodings: tokenizers' own, and transformers' AutoTokenizer on the saved folder beside them.
    auto = None
    try:
        from transformers import AutoTokenizer
        auto = AutoTokenizer.from_pretrained(folder)
    except Exception as e:
        notes.append(f"{name}: AutoTokenizer.from_pretrained failed ({e!r})")
    rows = []
    for text in TEXTS + [SPECIAL_TEXTS[name]]:
        ids = tok.encode(text, add_special_tokens=False).ids
        row = {"text": text, "ids": ids, "ids_with_special": tok.encode(text).ids,
               "decoded": tok.decode(ids, skip_special_tokens=False),
               "decoded_skip_special": tok.decode(ids, skip_special_tokens=True)}
        if auto is not None:
            auto_ids = auto(text, add_special_tokens=False)["input_ids"]
            if auto_ids != ids:
                notes.append(f"{name}: AutoTokenizer encodes {text!r} as {auto_ids}, tokenizers as {ids}")
        rows.append(row)
    info = {"family": name, "vocab_size": tok.get_vocab_size(with_added_tokens=True), "saved_by": saved_by,
            "texts": rows, "notes": [n for n in notes if n.startswith(name + ":")],
            "versions": {"tokenizers": tokenizers.__version__, "python": platform.python_version()}}
    with open(os.path.join(folder, "encodings.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1, ensure_ascii=False)
        f.write("\n")
    log(f"[{name}] vocab {info['vocab_size']}, files {sorted(os.listdir(folder))}")


def sentencepiece_model(out, notes):
    try:
        import sentencepiece as spm
    except ImportError as e:
        notes.append(f"spm: sentencepiece is not installed ({e}); no tokenizer.model written")
        log(notes[-1])
        return
    import tempfile
    folder = os.path.join(out, "tokenizers", "spm")
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        text = os.path.join(tmp, "corpus.txt")
        with open(text, "w", encoding="utf-8") as f:
            f.write("\n".join(corpus()))
        prefix = os.path.join(tmp, "m")
        spm.SentencePieceTrainer.train(input=text, model_prefix=prefix, model_type="bpe", vocab_size=600,
                                       byte_fallback=True, character_coverage=0.9995, unk_id=0, bos_id=1, eos_id=2,
                                       pad_id=-1, split_digits=True, allow_whitespace_only_pieces=True,
                                       remove_extra_whitespaces=False, normalization_rule_name="identity",
                                       num_threads=1, minloglevel=2)
        with open(prefix + ".model", "rb") as src, open(os.path.join(folder, "tokenizer.model"), "wb") as dst:
            dst.write(src.read())
    sp = spm.SentencePieceProcessor(model_file=os.path.join(folder, "tokenizer.model"))
    rows = [{"text": t, "ids": sp.encode(t), "decoded": sp.decode(sp.encode(t))} for t in TEXTS]
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
                   "add_eos_token": False, "tokenizer_class": "LlamaTokenizer"}, f, indent=2)
    with open(os.path.join(folder, "encodings.json"), "w", encoding="utf-8") as f:
        json.dump({"family": "spm", "vocab_size": sp.get_piece_size(), "texts": rows,
                   "versions": {"sentencepiece": spm.__version__}}, f, indent=1, ensure_ascii=False)
        f.write("\n")
    log(f"[spm] vocab {sp.get_piece_size()}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write tokenizers/<name>/... into")
    parser.add_argument("--tar", help="also pack tokenizers/ into this .tar.gz")
    args = parser.parse_args()
    log(f"python {platform.python_version()}, tokenizers {tokenizers.__version__}")
    notes = []

    llama3 = train_byte_level(LLAMA3_PATTERN, 400, nfc=False)
    llama3.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"])
    bot = llama3.token_to_id("<|begin_of_text|>")
    llama3.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
        special_tokens=[("<|begin_of_text|>", bot)])
    save(llama3, "llama3", args.out, "<|begin_of_text|>", "<|end_of_text|>",
         [llama3.token_to_id("<|end_of_text|>"), llama3.token_to_id("<|eot_id|>")], bot, None, None, notes)

    qwen2 = train_byte_level(QWEN2_PATTERN, 400, nfc=True)
    qwen2.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    eot = qwen2.token_to_id("<|endoftext|>")
    save(qwen2, "qwen2", args.out, None, "<|endoftext|>", [qwen2.token_to_id("<|im_end|>"), eot], eot,
         "<|endoftext|>", None, notes)

    for name, metaspace in (("llama2", False), ("mistral", True)):
        sp = train_sentencepiece_style(600, metaspace)
        save(sp, name, args.out, "<s>", "</s>", [2], 1, None, "<unk>", notes)

    sentencepiece_model(args.out, notes)
    for n in notes:
        log("note:", n)
    if args.tar:
        with tarfile.open(args.tar, "w:gz") as tar:
            tar.add(os.path.join(args.out, "tokenizers"), arcname="tokenizers")
        log(f"packed {args.tar}: {os.path.getsize(args.tar)} bytes")


if __name__ == "__main__":
    main()
