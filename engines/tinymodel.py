"""A tiny Llama-architecture causal LM built locally, for tests and demos.

No hub, no download: a byte-level BPE tokenizer is trained with ``tokenizers``
on text generated here from a fixed word list, and a 4-layer Llama (hidden
256, ~5.2M parameters) is initialised at random with a fixed seed and saved
with ``save_pretrained`` (safetensors). The directory loads with
``AutoModelForCausalLM`` / ``AutoTokenizer`` and with vLLM, offline.

THE WEIGHTS ARE RANDOM: the model produces random text. It exists to exercise
the real loading, generation, streaming and interrupt code paths.

The build is idempotent and safe to race: it takes a lock file next to the
target, builds into a temporary directory and renames it into place.

CLI: ``python -m engines.tinymodel DIR``
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator

log = logging.getLogger("llmsup.tinymodel")

MARKER = "llmsup-tiny-model.json"  # written last: its presence means the build is complete
VOCAB_SIZE = 2000
SEED = 1234
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLES = ("<|system|>", "<|user|>", "<|assistant|>")
# No bos_token in the template: the tokenizer adds <|bos|> itself when the rendered prompt is encoded.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
WORDS = (  # noqa: SIM905 (a word list reads better as text)
    "the of and to in is it that was for on are with as be at by this have from or one had not but what all "
    "were when we there can an your which their said if do will each about how up out them then she many some "
    "so these would other into has more her two like him see time could no make than first been its who now "
    "people my made over did down only way find use may water long little very after words called just where "
    "most know get through back much before go good new write our used me man too any day same right look think "
    "also around another came come work three word must because does part even place well such here take why "
    "help put different away again off went old number great tell men say small every found still between name "
    "should home big give air line set own under read last never us left end along while might next sound below "
    "saw something thought both few those always show large often together asked house world going want school "
    "important until form food keep children feet land side without boy once animal life enough took four head "
    "above kind began almost live page got earth need far hand high year mother light country father let night "
    "picture being study second soon story since white ever paper hard near sentence better best across during "
    "today however sure knew try told young sun thing whole hear example heard several change answer room sea "
    "against top turned learn point city play toward five himself usually money seen car morning engine model "
    "token prompt queue job deadline signal interrupt cluster supervisor request stream batch memory process"
).split()


def corpus_lines(n_lines: int = 6000, seed: int = SEED) -> Iterator[str]:
    """Deterministic pseudo-English text (sentences, numbers, chat turns) to train the tokenizer."""
    rng = random.Random(seed)
    for i in range(n_lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 18))]
        sentence = " ".join(words).capitalize() + rng.choice([".", ".", ".", "?", "!", ","])
        if i % 7 == 0:
            sentence += f" {rng.randint(0, 99999)} {rng.random():.3f}"
        if i % 11 == 0:
            sentence = f"{rng.choice(ROLES)}\n{sentence}{EOS}"
        yield sentence


def build_tokenizer(directory: str) -> int:
    """Train the byte-level BPE tokenizer and save it for AutoTokenizer; returns the vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [BOS, EOS, PAD, *ROLES]
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=2048
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)
    return tok.get_vocab_size()


def build_model(directory: str, vocab_size: int, bos_id: int, eos_id: int, pad_id: int) -> int:
    """Random-init Llama (fixed seed) saved as safetensors; returns the parameter count."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    model.save_pretrained(directory, safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def _build_into(directory: str) -> dict[str, object]:
    from transformers import AutoTokenizer

    t0 = time.monotonic()
    vocab = build_tokenizer(directory)
    tok = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    params = build_model(directory, vocab, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    info: dict[str, object] = {
        "kind": "llmsup tiny random Llama",
        "warning": "random weights: generated text is random",
        "vocab_size": vocab,
        "parameters": params,
        "seed": SEED,
        "build_s": round(time.monotonic() - t0, 2),
    }
    with open(os.path.join(directory, MARKER), "w") as f:
        json.dump(info, f, indent=1)
    return info


def is_tiny_model(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, MARKER))


def ensure_tiny_model(directory: str) -> str:
    """Build the tiny model at ``directory`` unless it is already there; returns the absolute path."""
    directory = os.path.abspath(directory)
    if is_tiny_model(directory):
        return directory
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    with open(directory + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second engine starting now waits here, then finds it built
        if is_tiny_model(directory):
            return directory
        tmp = tempfile.mkdtemp(prefix=".tiny-build-", dir=parent)
        try:
            os.chmod(tmp, 0o755)
            info = _build_into(tmp)
            if os.path.exists(directory):  # an incomplete leftover (no marker): replace it
                shutil.rmtree(directory)
            os.rename(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.warning(
        "built the tiny local model at %s in %.1fs (%s parameters): its weights are RANDOM, its text is random",
        directory,
        info["build_s"],
        info["parameters"],
    )
    return directory


def ensure_tiny_embedder(model_dir: str, directory: str) -> str:
    """The tiny model as an embedding model: its files with ``is_matryoshka`` in its config (vLLM then takes
    ``dimensions``), for vLLM's ``runner=pooling, convert=embed`` (the last token's hidden state, normalized: 256
    dimensions). Built once; returns its directory."""
    if os.path.isfile(os.path.join(directory, "config.json")):
        return directory
    os.makedirs(os.path.dirname(os.path.abspath(directory)), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tiny-embed-", dir=os.path.dirname(os.path.abspath(directory)))
    shutil.copytree(model_dir, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.lock"))
    with open(os.path.join(tmp, "config.json")) as f:
        config = json.load(f)
    config["is_matryoshka"] = True
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config, f)
    os.rename(tmp, directory)
    return directory


def ensure_tiny_cross_encoder(model_dir: str, directory: str, seed: int = 0) -> str:
    """A tiny cross-encoder: a ``LlamaForSequenceClassification`` with one label on the tiny model's config and
    tokenizer, random weights (fixed seed), saved with ``save_pretrained``: vLLM runs it as a classifier that
    scores (query, document) pairs. Built once; returns its directory."""
    if os.path.isfile(os.path.join(directory, "config.json")):
        return directory
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig.from_pretrained(model_dir)
    config.num_labels = 1
    config.architectures = ["LlamaForSequenceClassification"]
    torch.manual_seed(seed)
    os.makedirs(os.path.dirname(os.path.abspath(directory)), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tiny-rerank-", dir=os.path.dirname(os.path.abspath(directory)))
    LlamaForSequenceClassification(config).save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(model_dir, local_files_only=True).save_pretrained(tmp)
    os.rename(tmp, directory)
    return directory


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m engines.tinymodel DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.monotonic()
    path = ensure_tiny_model(argv[0])
    print(f"{path} ready in {time.monotonic() - t0:.2f}s (random weights: its text is random)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
