"""Embedded keyword-spotting set: spoken keywords synthesised offline with espeak-ng.

The ``espeakng-loader`` wheel ships ``libespeak-ng.so`` and its voice data; we drive the library
through ctypes (no binary to install, no network). Classes follow Speech Commands' 12-class task:
the ten keywords, ``_silence_`` (background noise only) and ``_unknown_`` (other words).

Variety: 8 English accents x 68 voice variants (timbre, pitch contour, breathiness), speaking rate,
pitch, pitch range, volume, coloured background noise at 10-40 dB SNR and a random position of the
word in the 1 s clip (at least 0.1 s from either edge). A *voice* is an (accent, variant) pair; the
variants are split into disjoint train / val / test groups (44 / 8 / 16, stratified by variant family,
see SPLIT_PATTERN), so every test clip is spoken by a voice never heard in training.

This is synthesized speech, not recordings of people. Clips are generated once, deterministically
(seeded), and cached as ``<root>/keywords/<version>-<hash of the parameters>/keywords.npz``; a
cache that exists is loaded instead (~0.3 s). Generating the default 5,400 clips takes ~10-25 s on
2 cores (espeak-ng in two processes).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

VERSION = 2  # bump when the generation recipe changes: old caches are then ignored
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SILENCE, UNKNOWN = "_silence_", "_unknown_"
CLASSES = KEYWORDS + (SILENCE, UNKNOWN)
# Speech Commands' auxiliary words: what `_unknown_` is made of (same words in every split).
UNKNOWN_WORDS = ("bed", "bird", "cat", "dog", "eight", "five", "four", "happy", "house", "marvin", "nine",
                 "one", "seven", "sheila", "six", "three", "tree", "two", "wow", "zero", "backward",
                 "forward", "follow", "learn", "visual")
# espeak-ng's English accents (files in espeak-ng-data/lang/gmw); en-shaw is left out: it reads the
# Shavian alphabet and says Latin text exactly like `en`.
ACCENTS = ("en", "en-us", "en-029", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-gb-x-rp",
           "en-us-nyc")
# Voice variants (espeak-ng-data/voices/!v; "" is the accent's own voice), by family. Deliberately robotic or
# effect voices (robosoft*, Demonic, croak, UniRobot, ...) are left out: they are not speakers.
VARIANT_FAMILIES = {
    "male": ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8"),
    "female": ("f1", "f2", "f3", "f4", "f5"),
    "klatt": ("klatt", "klatt2", "klatt3", "klatt4"),  # espeak's Klatt formant synthesiser
    "whisper": ("whisper", "whisperf"),
    "named": ("adam", "Alex", "Alicia", "Andrea", "Andy", "anika", "Annie", "antonio", "aunty", "belinda",
              "benjamin", "boris", "caleb", "david", "Denis", "ed", "edward", "Gene", "grandma", "grandpa",
              "gustave", "Hugo", "ian", "iven", "iven2", "Jacky", "john", "Lee", "linda", "Marco", "Mario", "max",
              "Michael", "michel", "miguel", "Mike", "norbert", "paul", "pedro", "quincy", "Reed", "rob", "robert",
              "shelby", "steph", "travis", "victor", "zac"),
}
# Stratified, disjoint split of the 68 variants: walk them family by family (in the order above) and deal
# them out with this repeating 17-slot pattern (11 train, 2 val, 4 test), so every split gets its share of
# every family (male, female, Klatt, whisper, named) instead of a whole family landing in one split.
SPLIT_PATTERN = "TTtTvTTTtTTTtTvTt"


def _deal_variants() -> dict[str, tuple[str, ...]]:
    split_of = {"T": "train", "v": "val", "t": "test"}
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    ordered = [v for family in VARIANT_FAMILIES.values() for v in family]
    for i, variant in enumerate(ordered):
        out[split_of[SPLIT_PATTERN[i % len(SPLIT_PATTERN)]]].append(variant)
    return {k: tuple(v) for k, v in out.items()}


VARIANTS = _deal_variants()  # {"train": 44 variants, "val": 8, "test": 16}
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class KeywordSpec:
    """Everything the generated clips depend on (hashed into the cache key)."""

    train_per_class: int = 300
    val_per_class: int = 50
    test_per_class: int = 100
    sample_rate: int = 16000
    clip_seconds: float = 1.0
    seed: int = 0
    rate: tuple[int, int] = (120, 240)  # words per minute (espeak default 175)
    pitch: tuple[int, int] = (20, 80)  # espeak 0-100 (default 50)
    pitch_range: tuple[int, int] = (20, 90)  # intonation range, espeak 0-100 (default 50)
    gain_db: tuple[float, float] = (-20.0, 0.0)  # speech peak level, dB full scale
    # Speech / background noise power ratio. Below 10 dB, white noise buries the consonants that tell
    # up / off and no / go apart (val accuracy 87% at 5-10 dB vs 96-100% above 15 dB, white 89% vs brown 98%).
    snr_db: tuple[float, float] = (10.0, 40.0)
    # Keep each word this far from the clip's edges (when it fits), so that the data module's random time
    # shift (shift_seconds, 0.1 by default) never cuts a word's end off: "up" without its /p/ is "uh".
    edge_seconds: float = 0.1
    # Another vocabulary: these words are the classes, in this order (no _silence_ / _unknown_), e.g. the
    # digits zero..nine to test on FSDD's recordings (docs/fsdd.md). None: the 12 Speech Commands classes.
    words: tuple[str, ...] | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        return self.words if self.words is not None else CLASSES

    def counts(self) -> dict[str, int]:
        return {"train": self.train_per_class, "val": self.val_per_class, "test": self.test_per_class}

    def key(self, engine: str) -> str:
        fields = asdict(self)
        if self.words is None:  # the default vocabulary keeps the cache key it had before `words` existed
            del fields["words"]
        blob = json.dumps({"version": VERSION, "engine": engine, **fields}, sort_keys=True)
        return f"v{VERSION}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


# ----------------------------------------------------------------------------- espeak-ng via ctypes


class Espeak:
    """Minimal ctypes binding of the espeak-ng library bundled in the ``espeakng-loader`` wheel.

    espeak-ng keeps synthesiser state between utterances (pitch phase, ...) that no call resets, so the
    same calls give the same samples only from a fresh process (`synthesize` runs in one) with the
    random seed fixed (done here).
    """

    SYNCHRONOUS = 2  # AUDIO_OUTPUT_SYNCHRONOUS: espeak_Synth returns when all audio went to the callback
    RATE, VOLUME, PITCH, RANGE = 1, 2, 3, 4  # espeak_PARAMETER
    _CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as e:
            raise ImportError("the embedded keyword set is synthesised with espeak-ng: pip install espeakng-loader") from e
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.lib = lib
        self.sample_rate = lib.espeak_Initialize(self.SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak-ng failed to initialise (data {espeakng_loader.get_data_path()})")
        self.version = lib.espeak_Info(None).decode()
        # Breath / whisper noise and pitch jitter are random; initialisation seeds them from the clock.
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed(0)
        self._chunks: list[np.ndarray] = []

        def collect(wav, n, events):  # called by espeak with each block of 16-bit samples
            if n > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._callback = self._CALLBACK(collect)  # keep a reference: C holds only the pointer
        lib.espeak_SetSynthCallback(self._callback)

    def say(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int) -> np.ndarray:
        """int16 samples at `self.sample_rate` of `text` spoken by `voice` ("accent" or "accent+variant")."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        for param, value in ((self.RATE, rate), (self.PITCH, pitch), (self.RANGE, pitch_range), (self.VOLUME, 100)):
            self.lib.espeak_SetParameter(param, int(value), 0)
        self._chunks = []
        data = text.encode()
        # position 0, POS_CHARACTER (1), no end, espeakCHARS_UTF8 (1)
        if self.lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 1, None, None) != 0:
            raise RuntimeError(f"espeak-ng could not synthesise {text!r} with voice {voice!r}")
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


def engine_version() -> str:
    """The wheel that bundles espeak-ng, part of the cache key (another version speaks slightly differently)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return "espeakng-loader " + version("espeakng-loader")
    except PackageNotFoundError:
        return "espeakng-loader (not installed)"


def _synthesize(jobs: list[tuple[str, str, int, int, int]]) -> tuple[int, list[np.ndarray]]:
    """Run in a fresh process: (text, voice, rate, pitch, range) jobs -> (sample rate, int16 utterances)."""
    engine = Espeak()
    return engine.sample_rate, [engine.say(*job) for job in jobs]


SYNTH_CHUNK = 1000  # utterances per fresh espeak-ng process (fixed: the output must not depend on the core count)


def synthesize(jobs: list[tuple[str, str, int, int, int]]) -> tuple[int, list[np.ndarray]]:
    """`_synthesize` on fixed chunks of jobs, each in a fresh process (so the output depends on the jobs
    only), up to two at once. The processes run this file as a script, not multiprocessing's spawn:
    spawn re-imports the caller's main module (train.py: torch + Lightning, ~5 s per process)."""
    import subprocess
    import sys
    import tempfile

    chunks = [jobs[i:i + SYNTH_CHUNK] for i in range(0, len(jobs), SYNTH_CHUNK)] or [[]]
    results: list[tuple[int, list[np.ndarray]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = [(Path(tmp, f"jobs{i}.json"), Path(tmp, f"wavs{i}.npz")) for i in range(len(chunks))]
        for (jobs_path, _), chunk in zip(paths, chunks):
            jobs_path.write_text(json.dumps(chunk))
        for start in range(0, len(chunks), 2):
            procs = [subprocess.Popen([sys.executable, __file__, str(a), str(b)], stderr=subprocess.PIPE, text=True)
                     for a, b in paths[start:start + 2]]
            for proc in procs:
                _, err = proc.communicate()
                if proc.returncode != 0:
                    raise RuntimeError(f"espeak-ng synthesis failed (exit {proc.returncode}):\n{err[-2000:]}")
        for _, wavs_path in paths:
            with np.load(wavs_path) as data:
                results.append((int(data["sample_rate"]), [data[f"w{i}"] for i in range(len(data.files) - 1)]))
    return results[0][0], [wav for _, wavs in results for wav in wavs]


# ----------------------------------------------------------------------------- the clips


def voices(split: str) -> list[str]:
    """The (accent+variant) voice names of a split; disjoint between splits by construction."""
    return [a + (f"+{v}" if v else "") for a in ACCENTS for v in VARIANTS[split]]


def coloured_noise(rng: np.random.Generator, n: int, colour: str) -> np.ndarray:
    """Unit-power white, pink (1/f) or brown (1/f^2) noise, shaped in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spectrum), dtype=np.float64)
    f[0] = 1.0
    spectrum *= {"white": 1.0, "pink": f ** -0.5, "brown": 1.0 / f}[colour]
    noise = np.fft.irfft(spectrum, n)
    return noise / (noise.std() + 1e-12)


def trim(wave: np.ndarray, threshold: float = 0.02) -> np.ndarray:
    """Cut leading / trailing samples quieter than `threshold` x the peak (espeak pads with silence)."""
    loud = np.flatnonzero(np.abs(wave) > threshold * max(np.abs(wave).max(), 1e-9))
    return wave[loud[0]: loud[-1] + 1] if len(loud) else wave[:0]


def plan(spec: KeywordSpec) -> list[dict]:
    """Every clip's recipe (split, label, word, voice, prosody, level, noise), drawn from the seed."""
    rng = np.random.default_rng(spec.seed)
    items = []
    for split in SPLITS:
        pool = voices(split)
        for label, name in enumerate(spec.classes):
            for _ in range(spec.counts()[split]):
                word = "" if name == SILENCE else str(rng.choice(UNKNOWN_WORDS)) if name == UNKNOWN else name
                items.append({
                    "split": split, "label": label, "word": word, "voice": str(rng.choice(pool)),
                    "rate": int(rng.integers(*spec.rate, endpoint=True)),
                    "pitch": int(rng.integers(*spec.pitch, endpoint=True)),
                    "range": int(rng.integers(*spec.pitch_range, endpoint=True)),
                    "gain_db": float(rng.uniform(*spec.gain_db)), "snr_db": float(rng.uniform(*spec.snr_db)),
                    "noise": str(rng.choice(["white", "pink", "brown"])),
                    "position": float(rng.uniform()),  # where the word sits in the clip, 0 = start, 1 = end
                    "seed": int(rng.integers(2**31)),
                })
    return items


def render(spec: KeywordSpec) -> dict[str, np.ndarray]:
    """Generate all clips: {f"{split}_audio": int16 (N, samples), f"{split}_labels", f"{split}_voices"}."""
    import torch
    import torchaudio.functional as AF

    items = plan(spec)
    # Tiny ops: extra intra-op threads only wait for each other (seen 20x slower on 2 busy cores).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _render(spec, items)
    finally:
        torch.set_num_threads(threads)


def _render(spec: KeywordSpec, items: list[dict]) -> dict[str, np.ndarray]:
    import torch
    import torchaudio.functional as AF

    speech = [it for it in items if it["word"]]
    engine_rate, utterances = synthesize([(it["word"], it["voice"], it["rate"], it["pitch"], it["range"])
                                          for it in speech])
    n = int(round(spec.sample_rate * spec.clip_seconds))
    trimmed = [trim(wav.astype(np.float32) / 32768.0) for wav in utterances]
    for it, w in zip(speech, trimmed):
        if len(w) == 0:
            raise RuntimeError(f"espeak-ng produced silence for {it['word']!r} with voice {it['voice']!r}")
    # Resample zero-padded batches: one filter for all clips (per-clip calls cost 3 ms each).
    padded = np.zeros((len(trimmed), max(len(w) for w in trimmed)), np.float32)
    for i, w in enumerate(trimmed):
        padded[i, : len(w)] = w
    resampled = torch.cat([AF.resample(torch.from_numpy(chunk), engine_rate, spec.sample_rate)
                           for chunk in np.array_split(padded, max(1, len(padded) // 256))]).numpy()
    words: dict[int, np.ndarray] = {}
    for it, w, r in zip(speech, trimmed, resampled):
        w = r[: int(np.ceil(len(w) * spec.sample_rate / engine_rate))]
        if len(w) > n:  # a slow long word: keep the middle second (rare at the default rates)
            start = (len(w) - n) // 2
            w = w[start:start + n]
        words[id(it)] = w
    out: dict[str, list] = {f"{s}_{k}": [] for s in SPLITS for k in ("audio", "labels", "voices")}
    for it in items:
        rng = np.random.default_rng(it["seed"])
        clip = np.zeros(n, np.float64)
        level = 10 ** (it["gain_db"] / 20)
        w = words.get(id(it))
        if w is not None:
            edge = min(int(spec.edge_seconds * spec.sample_rate), (n - len(w)) // 2)
            start = edge + int(it["position"] * (n - len(w) - 2 * edge))
            clip[start:start + len(w)] = w / (np.abs(w).max() + 1e-9) * level
            power = np.mean(w.astype(np.float64) ** 2) / (np.abs(w).max() + 1e-9) ** 2 * level**2
            noise_rms = np.sqrt(power / 10 ** (it["snr_db"] / 10))
        else:  # silence: background noise alone, from barely audible to loud
            noise_rms = level * 10 ** (-it["snr_db"] / 20)
        clip += coloured_noise(rng, n, it["noise"]) * noise_rms
        out[f"{it['split']}_audio"].append(np.clip(np.round(clip * 32767), -32768, 32767).astype(np.int16))
        out[f"{it['split']}_labels"].append(it["label"])
        out[f"{it['split']}_voices"].append(it["voice"])
    return {k: np.stack(v) if k.endswith("audio") and v else np.asarray(v) for k, v in out.items()}


def load_keywords(root: str | os.PathLike, spec: KeywordSpec, log=print) -> dict[str, np.ndarray]:
    """The cached clips for `spec` under `root`, generated (and cached) first if absent."""
    folder = Path(root).expanduser() / "keywords" / spec.key(engine_version())
    path = folder / "keywords.npz"
    if not path.is_file():
        start = time.perf_counter()
        log(f"Generating the synthetic keyword set (espeak-ng) into {folder} ...")
        arrays = render(spec)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"keywords.{secrets.token_hex(4)}.tmp.npz"  # unique on every node sharing the folder
        np.savez(tmp, **arrays)
        spec_tmp = tmp.with_suffix(".json")
        spec_tmp.write_text(json.dumps({"version": VERSION, **asdict(spec)}, indent=2) + "\n")
        os.replace(spec_tmp, folder / "spec.json")
        os.replace(tmp, path)  # atomic: a crashed run never leaves a half-written cache behind
        log(f"Generated {sum(len(arrays[f'{s}_labels']) for s in SPLITS)} clips in {time.perf_counter() - start:.1f} s")
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


__all__ = ["CLASSES", "KEYWORDS", "KeywordSpec", "load_keywords", "render", "voices"]


if __name__ == "__main__":  # `synthesize`'s worker: python keywords.py <jobs.json> <out.npz>
    import sys

    rate, wavs = _synthesize([tuple(job) for job in json.loads(Path(sys.argv[1]).read_text())])
    np.savez(sys.argv[2], sample_rate=np.int64(rate), **{f"w{i}": w for i, w in enumerate(wavs)})
