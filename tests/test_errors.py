"""Hostile input and reused run directories (docs/errors.md): a run is never damaged by a later command,
odd input is adapted and said so, bad input is one line `error: ...` with exit code 2, a bug keeps its
traceback. Runs here are untrained checkpoints made in-process (no training) unless training is the point;
the command lines run in-process through runpy (the same `__main__` block), one through a real subprocess."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf, open_dict
from PIL import Image

import predict
from helpers.cli import command, restored_globals, run_cli
from helpers.config import ROOT, compose_config
from helpers.runs import SMALL, TINY, train_in_process
from utils.build import build_datamodule, build_module
from utils.checkpoint import CONFIG_KEY, load_checkpoint, run_config
from utils.errors import FileFormatError, UserError, path_argument_as, run_hydra, user_errors
from utils.rundir import check_run_dir
from utils.validate import check_model_config
from inference.inputs import read as read_input
from inference.load import load as load_trained
from inference.predictor import source_ids
from viz.samples import write_mp4, write_png, write_wav


def make_run(model: str, run: Path, *overrides: str) -> Path:
    """A run directory with an untrained checkpoint that carries its config, as train.py leaves it."""
    cfg = compose_config("train", [f"model={model}", *TINY, *SMALL[model], *overrides], run)
    with open_dict(cfg):
        cfg.paths.data_dir = str(ROOT / "datasets")  # the generated datasets cached there
    dm = build_datamodule(cfg)
    module = build_module(cfg)
    ckpt = {"state_dict": module.state_dict(), CONFIG_KEY: OmegaConf.to_container(cfg, resolve=False)}
    if dm.state_dict():  # the translator's tokenizer
        ckpt[type(dm).__name__] = dm.state_dict()
    (run / "checkpoints").mkdir(parents=True)
    torch.save(ckpt, run / "checkpoints" / "best.ckpt")
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One untrained run per model, made on first use and shared (tests copy a run before changing it)."""

    class Runs(dict):
        def __missing__(self, model: str) -> Path:
            self[model] = make_run(model, tmp_path_factory.mktemp(f"{model}_run"))
            return self[model]

    return Runs()


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def predict_cli(capsys, *args: str) -> tuple[int, str, str]:
    with restored_globals():  # --threads 1 would stay set for the rest of the session
        try:
            code = predict.main([*args, "--threads", "1"])
        except SystemExit as stop:  # argparse's own errors (a bad flag value) end the command there
            code = stop.code
    out = capsys.readouterr()
    return code, out.out, out.err


# --- run directories: never damaged by a later command -------------------------------------------------


@pytest.fixture
def used_run(runs, tmp_path) -> Path:
    """A copy of a finished run, with the files a training run leaves (config, metrics, log)."""
    run = tmp_path / "run"
    shutil.copytree(runs["vit"], run)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("# the training run's config\n")
    (run / "metrics.json").write_text('{"test/acc": 0.5}\n')
    return run


def test_commands_pointed_at_an_existing_run_refuse_before_writing(used_run: Path, capsys) -> None:
    before = snapshot(used_run)
    cases = [
        (("train.py", f"hydra.run.dir={used_run}"),
         f"error: hydra.run.dir={used_run} is not empty (.hydra/, checkpoints/, metrics.json); training into it would "
         f"mix two runs. Choose a new directory, resume that run with ckpt_path={used_run}, or replace it with "
         f"overwrite=true\n"),
        (("train.py", "model.net.num_heads=0", f"hydra.run.dir={used_run}"),  # a failing command: refused first
         f"error: hydra.run.dir={used_run} is not empty (.hydra/, checkpoints/, metrics.json); training into it would "
         f"mix two runs. Choose a new directory, resume that run with ckpt_path={used_run}, or replace it with "
         f"overwrite=true\n"),
        (("evaluate.py", f"ckpt_path={used_run}", f"hydra.run.dir={used_run}"),
         f"error: hydra.run.dir={used_run} holds a training run (checkpoints/); evaluate.py writes into a directory of "
         f"its own: leave hydra.run.dir out or choose a new directory\n"),
        (("evaluate.py", f"ckpt_path={used_run}", f"hydra.run.dir={used_run}", "overwrite=true"),
         f"error: hydra.run.dir={used_run} holds a training run (checkpoints/); evaluate.py writes into a directory of "
         f"its own: leave hydra.run.dir out or choose a new directory\n"),
        (("evaluate.py", f"ckpt_path={used_run}", f"hydra.run.dir={used_run / 'eval'}"),
         f"error: hydra.run.dir={used_run / 'eval'} is inside the run being read ({used_run}); this command never "
         f"writes into a run: choose a folder outside it\n"),
        (("export.py", str(used_run), f"hydra.run.dir={used_run}"),  # the run as a bare argument works too
         f"error: hydra.run.dir={used_run} holds a training run (checkpoints/); export.py writes into a directory of "
         f"its own: leave hydra.run.dir out or choose a new directory\n"),
        (("train.py", "-m", "model.net.depth=1,2", f"hydra.sweep.dir={used_run}"),
         f"error: hydra.sweep.dir={used_run} is not empty (.hydra/, checkpoints/, metrics.json); a sweep into it would "
         f"mix with the runs there. Choose a new directory or replace them with overwrite=true\n"),
    ]
    for args, message in cases:
        assert command(*args) == (2, "", message), args
    assert snapshot(used_run) == before  # byte for byte, .hydra/config.yaml included


def test_export_out_inside_the_run_is_refused(used_run: Path, tmp_path: Path, capsys) -> None:
    code, _, err = command("export.py", f"ckpt_path={used_run}", f"out={used_run / 'onnx'}",
                           f"hydra.run.dir={tmp_path / 'export'}")
    assert (code, err) == (2, f"error: out={used_run / 'onnx'} is inside the run being read ({used_run}); this command "
                              f"never writes into a run: choose a folder outside it\n")
    assert not (used_run / "onnx").exists()


def test_a_second_evaluation_into_the_same_folder_needs_overwrite(used_run: Path, tmp_path: Path) -> None:
    ev = tmp_path / "ev"
    (ev / ".hydra").mkdir(parents=True)
    (ev / "metrics.json").write_text("{}\n")
    cfg = OmegaConf.create({"task_name": "evaluate", "ckpt_path": str(used_run), "overwrite": False})
    with pytest.raises(UserError, match=rf"^hydra.run.dir={ev} is not empty \(.hydra/, metrics.json\); choose a new "
                                        rf"directory, or reuse it with overwrite=true$"):
        check_run_dir(cfg, ev)
    cfg.overwrite = True
    assert check_run_dir(cfg, ev) is None and (ev / "metrics.json").is_file()  # reused; train's outputs untouched


def test_a_folder_left_by_a_command_that_stopped_early_is_reused(tmp_path: Path) -> None:
    # A command that failed before writing any result leaves only its .hydra/ and log: nothing to protect.
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("a: 1\n")
    (tmp_path / "train.log").write_text("error\n")
    assert check_run_dir(OmegaConf.create({"task_name": "train"}), tmp_path) is None
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_the_old_run_and_best_ckpt_is_always_the_new_runs(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_in_process("vit", run, "trainer.max_epochs=1", "test=false", "seed=1")
    old_best = load_checkpoint(run / "checkpoints" / "best.ckpt")["state_dict"]
    (run / "notes.txt").write_text("mine\n")  # not a run output: kept
    cfg = OmegaConf.create({"task_name": "train", "overwrite": True, "ckpt_path": None})
    assert check_run_dir(cfg, run) is None
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    # Even a stale best.ckpt that got there some other way is replaced, not kept beside best-v1.ckpt.
    (run / "checkpoints").mkdir()
    torch.save({"state_dict": old_best, "epoch": 99}, run / "checkpoints" / "best.ckpt")
    train_in_process("vit", run, "trainer.max_epochs=1", "test=false", "seed=2")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    best, last = (load_checkpoint(run / "checkpoints" / n) for n in ("best.ckpt", "last.ckpt"))
    assert best["epoch"] == 0 and all(torch.equal(best["state_dict"][k], v) for k, v in last["state_dict"].items())
    assert not torch.equal(best["state_dict"]["net.head.weight"], old_best["net.head.weight"])
    with pytest.raises(UserError, match="overwrite=true would delete the checkpoint that ckpt_path="):
        check_run_dir(OmegaConf.create({"task_name": "train", "overwrite": True, "ckpt_path": str(run)}), run)


def test_resume_in_place_keeps_the_runs_own_config(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_in_process("vit", run, "test=false", "trainer.max_epochs=1")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("# the first command's config\n")
    command("train.py", *TINY, *SMALL["vit"], "test=false", "trainer.max_epochs=2", f"ckpt_path={run}",
            f"hydra.run.dir={run}", check=True)
    assert (run / ".hydra" / "config.yaml").read_text() == "# the first command's config\n"
    resumed = list((run / ".hydra").glob("resume_*/config.yaml"))
    assert len(resumed) == 1 and "max_epochs: 2" in resumed[0].read_text()
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 1  # it continued, in place
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_the_config_is_read_from_the_checkpoint_not_the_run_folder(runs, tmp_path: Path, capsys) -> None:
    # A later command that rewrote .hydra/config.yaml (another model, broken YAML) changes nothing, and a
    # checkpoint that holds another model than its run folder says so.
    run = tmp_path / "run"
    shutil.copytree(runs["vit"], run)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("model: {net: {_target_: models.audio.AudioSpectrogramTransformer}}\n")
    ckpt = load_checkpoint(run / "checkpoints" / "best.ckpt")
    assert run_config(run / "checkpoints" / "best.ckpt", ckpt).model.net._target_ == "models.vit.VisionTransformer"
    assert load_trained(run).kind == "image"
    assert ("holds a models.vit.VisionTransformer, but its run directory was trained as a "
            "models.audio.AudioSpectrogramTransformer") in capsys.readouterr().err
    (run / ".hydra" / "config.yaml").write_text(": not yaml [\n")
    assert load_trained(run).kind == "image"


def test_a_bare_path_argument_is_the_checkpoint(tmp_path: Path) -> None:
    assert path_argument_as("ckpt_path", [str(tmp_path), "x=1"]) == [f"ckpt_path={tmp_path}", "x=1"]
    assert path_argument_as("ckpt_path", ["--cfg", str(tmp_path)]) == ["--cfg", str(tmp_path)]  # a flag's value
    assert path_argument_as("ckpt_path", [str(tmp_path / "nope")]) == [str(tmp_path / "nope")]
    assert path_argument_as("ckpt_path", ["ckpt_path=a", str(tmp_path)]) == ["ckpt_path=a", str(tmp_path)]


# --- silent wrong answers --------------------------------------------------------------------------------


def _png16(path: Path, values: np.ndarray) -> Path:
    Image.fromarray(values.astype(np.uint16)).save(path)
    return path


def test_a_16_bit_png_is_scaled_not_read_as_a_white_page(runs, tmp_path: Path, capsys) -> None:
    gradient = (np.arange(28 * 28).reshape(28, 28) % 256).astype(np.uint8)
    png8 = write_png(torch.from_numpy(gradient)[None], tmp_path / "digit8.png")
    png16 = _png16(tmp_path / "digit16.png", gradient.astype(np.uint16) * 257)  # the same picture in 16 bits
    with Image.open(png16) as im:
        assert im.mode == "I;16"
    white = write_png(torch.full((1, 28, 28), 255, dtype=torch.uint8), tmp_path / "white.png")
    loaded = load_trained(runs["vit"])
    notes: list[str] = []
    x16 = read_input(loaded, str(png16), notes)
    assert torch.equal(x16, read_input(loaded, str(png8))) and not torch.equal(x16, read_input(loaded, str(white)))
    assert notes == ["16-bit grayscale scaled to 8 bits"]
    code, out, err = predict_cli(capsys, str(runs["vit"]), str(png8), str(png16))
    lines = out.splitlines()
    assert code == 0 and lines[0].split(": ", 1)[1] == lines[1].split(": ", 1)[1]
    assert err == f"note: {png16}: 16-bit grayscale scaled to 8 bits\n"


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_audio_with_nan_or_inf_samples_is_refused_with_its_name(bad: float, runs, tmp_path: Path, capsys) -> None:
    wave = np.zeros(16000, np.float32)
    wave[100] = bad
    path = tmp_path / "clip.wav"
    sf.write(path, wave, 16000, subtype="FLOAT")
    assert predict_cli(capsys, str(runs["audio"]), str(path)) == (
        2, "", f"error: audio file {path} holds 1 NaN or infinite sample(s), the first at 0.006 s; expected finite "
               f"samples\n")
    # ... and in a training folder, before training starts rather than as a NaN loss naming no file
    from data.audio import AudioDataModule

    for c in ("a", "b"):
        (tmp_path / "folder" / c).mkdir(parents=True)
        for i in range(3):
            sf.write(tmp_path / "folder" / c / f"{i}.wav", np.full(800, 0.1, np.float32), 16000, subtype="FLOAT")
    shutil.copy(path, tmp_path / "folder" / "b" / "1.wav")
    with pytest.raises(FileFormatError, match=rf"^audio file {tmp_path / 'folder' / 'b' / '1.wav'} holds 1 NaN"):
        AudioDataModule(dataset="audio_folder", root=str(tmp_path / "folder")).setup()


def test_96khz_stereo_and_short_audio_run_and_say_what_was_done(runs, tmp_path: Path, capsys) -> None:
    path = tmp_path / "stereo.wav"
    sf.write(path, np.full((48000, 2), 0.1, np.float32), 96000)  # 0.5 s
    code, out, err = predict_cli(capsys, str(runs["audio"]), str(path))
    assert code == 0 and out.startswith(f"{path}: ")
    assert err == (f"note: {path}: mixed 2 channels to mono; resampled from 96000 Hz to 16000 Hz; 0.5 s long: padded "
                   f"with silence to the model's 1 s clip\n")


@pytest.mark.parametrize("content, message", [
    (None, "error: text file {path!r} does not exist (to give a sentence or prompt that ends in .txt, put a space "
           "in it or leave the extension out)\n"),
    (b"", "error: {path} holds no sentences (it is empty or blank); expected one sentence a line\n"),
    (b" \n\t\n", "error: {path} holds no sentences (it is empty or blank); expected one sentence a line\n"),
    ("Guten Tag\ncaf\xe9\n".encode("latin-1"),
     "error: predict.py: {path} is not UTF-8 text: byte b'\\xe9' at line 2 (offset 13) cannot be decoded; save the "
     "file as UTF-8\n"),
], ids=["missing", "empty", "blank", "latin-1"])
def test_a_text_file_that_is_missing_empty_or_not_utf8_is_refused(content, message, runs, tmp_path, capsys) -> None:
    path = tmp_path / "sentences.txt"
    if content is not None:
        path.write_bytes(content)
    assert predict_cli(capsys, str(runs["translator"]), str(path)) == (2, "", message.format(path=str(path)))


def test_a_utf16_text_file_is_read_and_said_so(runs, tmp_path, capsys) -> None:
    path = tmp_path / "sentences.txt"
    path.write_bytes("Monday, March 3, 2025\nThank you.\n".encode("utf-16"))
    code, out, err = predict_cli(capsys, str(runs["translator"]), str(path))
    assert code == 0 and [line.split("\t")[0] for line in out.splitlines()] == ["Monday, March 3, 2025", "Thank you."]
    assert err == f"note: {path}: read as UTF-16 (it starts with a UTF-16 byte-order mark)\n"


def test_long_or_partly_unknown_text_runs_with_a_note_and_unknown_only_is_refused(runs, capsys) -> None:
    sentence = ("Monday, March 3, 2025. " * 5000)[:100_000]
    code, out, err = predict_cli(capsys, str(runs["translator"]), sentence)
    assert code == 0 and len(out.splitlines()) == 1
    assert err.startswith("note: ") and err.count("\n") == 1
    assert "tokens, more than the model's max_len=64: truncated to the first 64 tokens (" in err
    assert "of 100000 characters, up to " in err
    code, out, err = predict_cli(capsys, str(runs["translator"]), "Monday 日本 March")
    assert code == 0 and err == "note: 2 character(s) unknown to the tokenizer ('日本') read as [UNK]\n"
    assert predict_cli(capsys, str(runs["translator"]), "日本語のテキスト") == (
        2, "", "error: none of the characters of '日本語のテキスト' is known to the model's tokenizer (it knows the "
               "characters of its training text); nothing to translate\n")


def test_source_ids_count_unknown_characters_and_truncate() -> None:
    from models.tokenizer import UNK_ID, train_tokenizer

    tok = train_tokenizer(["one two three four five six"] * 20, vocab_size=60)
    notes: list[str] = []
    ids = source_ids(tok, "one ü two", 8, notes)
    assert ids.count(UNK_ID) == 1 and notes == ["1 character(s) unknown to the tokenizer ('ü') read as [UNK]"]
    notes = []
    ids = source_ids(tok, "one two three four five six " * 3, 8, notes)
    assert len(ids) == 8 and notes == ["19 tokens, more than the model's max_len=8: truncated to the first 8 tokens "
                                       "(35 of 84 characters, up to '...three four five six one two')"]
    with pytest.raises(UserError, match="^the sentence is empty; give text to translate$"):
        source_ids(tok, " \t ", 8)


TEMPERATURE = ("error: --temperature {}: expected 0 (greedy) or a finite number >= 1e-06 (sampled; 1 = the model's own "
               "distribution)")
GREEDY = ("error: {0} is for sampled decoding, but decoding is greedy (temperature 0); give --temperature > 0 "
          "(e.g. 0.8) to sample, or leave {0} out")
BAD_LM = [
    ([""], "error: the prompt is empty; give text to continue (e.g. \"ROMEO:\")"),
    (["ROMEO:", "--max-new-tokens", "0"], "error: --max-new-tokens 0: expected an integer >= 1 (how many tokens "
                                          "to add to the prompt)"),
    (["ROMEO:", "--max-new-tokens", "-3"], "error: --max-new-tokens -3: expected an integer >= 1 (how many tokens "
                                           "to add to the prompt)"),
    (["ROMEO:", "--temperature", "-1"], TEMPERATURE.format("-1.0")),
    (["ROMEO:", "--temperature", "inf"], TEMPERATURE.format("inf")),
    (["ROMEO:", "--temperature", "1e-45"], TEMPERATURE.format("1e-45")),
    (["ROMEO:", "--temperature", "1", "--seed", str(2**64)], f"error: --seed {2**64}: expected an integer in 0 .. "
                                                             "2**64 - 1"),
    (["ROMEO:", "--beam-size", "2"], "error: --beam-size is for translators and speech models; a language model "
                                     "decodes greedily or samples (--temperature)"),
    (["ROMEO:", "--seed", "5"], GREEDY.format("--seed")),
    (["ROMEO:", "--top-k", "5"], GREEDY.format("--top-k")),
    (["ROMEO:", "--top-p", "0.9"], GREEDY.format("--top-p")),
    (["ROMEO:", "--temperature", "0.8", "--top-p", "1.5"], "error: --top-p 1.5: expected a probability in (0, 1] "
     "(sample among the most likely tokens holding that much probability)"),
]


@pytest.mark.parametrize("args, message", BAD_LM, ids=["empty", "new-0", "new-negative", "temperature",
                                                       "temperature-inf", "temperature-tiny", "seed-range",
                                                       "beam-size", "seed-greedy", "top-k", "top-p-greedy",
                                                       "top-p-range"])
def test_a_bad_prompt_or_decoding_option_is_one_line_naming_it(args, message, runs, capsys) -> None:
    assert predict_cli(capsys, str(runs["lm"]), *args) == (2, "", message + "\n")


def test_decoding_options_to_another_model_are_refused(runs, capsys) -> None:
    code, out, err = predict_cli(capsys, str(runs["translator"]), "Thank you.", "--temperature", "0.8")
    assert (code, out) == (2, "") and err == ("error: --temperature: for language models (that continue a "
                                              "prompt); this translator model takes none of these options\n")


def test_a_long_prompt_or_unknown_characters_run_and_say_what_was_done(runs, capsys) -> None:
    code, out, err = predict_cli(capsys, str(runs["lm"]), "ROMEO: " * 10, "--max-new-tokens", "3")
    assert code == 0 and out.startswith("ROMEO: " * 10)
    assert err.splitlines()[0] == ("note: the prompt is 70 tokens; the model's context of 16 tokens leaves room for "
                                   "15: its first 55 tokens were cut (55 of 70 characters, up to 'O: ROMEO: ROMEO: "
                                   "ROMEO: ROMEO:'); it now starts ' ROMEO: ROMEO: '")
    code, out, err = predict_cli(capsys, str(runs["lm"]), "ROMEO ζ 日本", "--max-new-tokens", "3")
    assert code == 0 and err == ("note: 3 character(s) of the prompt unknown to the tokenizer ('ζ日本') read as "
                                 "[UNK]\n")


# --- tracebacks turned into messages -----------------------------------------------------------------


@pytest.fixture
def bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {"corrupt.png": b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, "empty.png": b"", "notes.dat": b"hello\n"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    out = {name: tmp_path / name for name in files}
    out["x.wav"] = write_wav(torch.zeros(8000), 16000, tmp_path / "x.wav")
    out["x.png"] = write_png(torch.zeros(1, 28, 28, dtype=torch.uint8), tmp_path / "x.png")
    out["x.mp4"] = write_mp4(torch.zeros(1, 10, 32, 32, dtype=torch.uint8), tmp_path / "x.mp4")
    out["one_frame.mp4"] = write_mp4(torch.zeros(1, 1, 32, 32, dtype=torch.uint8), tmp_path / "one_frame.mp4")
    out["sound.mp4"] = _audio_only_mp4(tmp_path / "sound.mp4")
    pixels = np.zeros((28, 28), np.float32)
    pixels[3, 4] = np.nan
    Image.fromarray(pixels, "F").save(tmp_path / "nan.tif")
    out["nan.tif"] = tmp_path / "nan.tif"
    return out


def _audio_only_mp4(path: Path) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    return path


BAD_FILES = [
    ("vit", "corrupt.png", "error: cannot read {path} as an image (OSError: Truncated File Read)\n"),
    ("vit", "empty.png", "error: cannot read {path} as an image (UnidentifiedImageError: cannot identify image file "
                         "'{path}')\n"),
    ("vit", "x.wav", "error: {path} is an audio file, but this VisionTransformer ({ckpt}) takes images (.png, .jpg, "
                     "...)\n"),
    ("vit", "x.mp4", "error: {path} is a video file, but this VisionTransformer ({ckpt}) takes images (.png, .jpg, "
                     "...)\n"),
    ("vit", "notes.dat", "error: cannot read {path} as an image (UnidentifiedImageError: cannot identify image file "
                         "'{path}'); this VisionTransformer takes images (.png, .jpg, ...)\n"),
    ("audio", "x.png", "error: {path} is an image file, but this AudioSpectrogramTransformer ({ckpt}) takes audio "
                       "files (.wav, .flac, .ogg)\n"),
    ("audio", "notes.dat", "error: cannot read audio file {path}: LibsndfileError: Error opening '{path}': Format not "
                           "recognised.; this AudioSpectrogramTransformer takes audio files (.wav, .flac, .ogg)\n"),
    ("video", "x.wav", "error: {path} is an audio file, but this VideoTransformer ({ckpt}) takes videos (.mp4, .avi, "
                       ".webm, .mkv, .mov, animated .gif)\n"),
    ("video", "x.png", "error: {path} is an image file, but this VideoTransformer ({ckpt}) takes videos (.mp4, .avi, "
                       ".webm, .mkv, .mov, animated .gif)\n"),
    ("video", "sound.mp4", "error: {path} has no video stream (it holds audio only)\n"),
    ("video", "one_frame.mp4", "error: {path} has 1 decodable frame(s), fewer than num_frames=8 (the clip length the "
                               "model takes; data.num_frames when training)\n"),
    ("vit", "nan.tif", "error: image {path} holds NaN or infinite pixel values; expected finite pixels\n"),
]


@pytest.mark.parametrize("model, name, message", BAD_FILES, ids=[f"{m}-{n}" for m, n, _ in BAD_FILES])
def test_predict_names_a_damaged_file_or_one_of_the_wrong_kind(model, name, message, runs, bad_files, capsys) -> None:
    path = bad_files[name]
    ckpt = runs[model] / "checkpoints" / "best.ckpt"
    assert predict_cli(capsys, str(runs[model]), str(path)) == (2, "", message.format(path=path, ckpt=ckpt))


def test_attention_folder_is_checked_before_the_model_is_loaded(runs, bad_files, capsys) -> None:
    run, image = runs["vit"], str(bad_files["x.png"])
    inside = run / "pictures"
    assert predict_cli(capsys, str(run), image, "--attention-dir", str(inside)) == (
        2, "", f"error: --attention-dir={inside} is inside the run being read ({run}); this command never writes into "
               f"a run: choose a folder outside it\n")
    under_a_file = bad_files["x.png"] / "pictures"
    assert predict_cli(capsys, str(run), image, "--attention-dir", str(under_a_file)) == (
        2, "", f"error: --attention-dir {under_a_file}: cannot write there (Not a directory)\n")
    if Path("/sys").is_dir():  # read-only even for root
        assert predict_cli(capsys, str(run), image, "--attention-dir", "/sys") == (
            2, "", "error: --attention-dir /sys: cannot write there (Permission denied)\n")
    assert predict_cli(capsys, str(run), image, "--heads", "0,7") == (
        2, "", "error: --heads 0,7: this model has 4 heads per layer (0..3)\n")
    assert not inside.exists()
    assert predict_cli(capsys, str(run), image, "--attention-dir", image) == (
        2, "", f"error: --attention-dir {image} is a file; expected a folder (created when missing)\n")
    if Path("/sys").is_dir():
        assert predict_cli(capsys, str(run), image, "--html", "/sys/page.html") == (
            2, "", "error: --html /sys/page.html: its folder /sys: cannot write there (Permission denied)\n")


def test_flags_the_model_does_not_read_are_refused_and_argparse_errors_are_one_line(runs, bad_files, capsys) -> None:
    image = str(bad_files["x.png"])
    assert predict_cli(capsys, str(runs["translator"]), "Thank you.", "--top-k", "3") == (
        2, "", "error: --top-k 3: for classifiers (how many classes to print) and language models (sampling); this "
               "translator model takes no --top-k\n")
    assert predict_cli(capsys, str(runs["vit"]), image, "--beam-size", "3") == (
        2, "", "error: --beam-size 3: for translators and speech models; this image model does not "
               "decode text\n")
    assert predict_cli(capsys, str(runs["vit"]), image, "--encoder-layer", "0") == (
        2, "", "error: --encoder-layer is for translators (the picture of their encoder's self-attention); this "
               "image model draws no such picture\n")
    for flag, value, expected in (("--beam-size", "0", "'0': expected an integer >= 1"),
                                  ("--heads", "a,b", "'a,b': expected comma-separated head indices, e.g. 0,2")):
        assert predict_cli(capsys, str(runs["vit"]), image, flag, value) == (
            2, "", f"error: argument {flag}: {expected} (python predict.py --help lists the options)\n")


def test_files_of_the_same_name_in_two_folders_get_a_picture_each(runs, tmp_path, capsys) -> None:
    pictures = tmp_path / "pictures"
    paths = []
    for k, name in enumerate(("a", "b")):
        (tmp_path / name).mkdir()
        paths.append(write_png(torch.full((1, 28, 28), 40 * k, dtype=torch.uint8), tmp_path / name / "x.png"))
    code, out, err = predict_cli(capsys, str(runs["vit"]), *map(str, paths), "--attention-dir", str(pictures))
    assert code == 0, err
    drawn = sorted(p.name for p in pictures.iterdir())
    assert len(drawn) >= 2 and all(name.startswith(("000_x", "001_x")) for name in drawn), drawn
    assert {name[:3] for name in drawn} == {"000", "001"}


BAD_VALUES = [
    ("model.net.num_heads=0", "model.net.num_heads=0: expected an integer >= 1"),
    ("model.net.dim=-8", "model.net.dim=-8: expected an integer >= 1"),
    ("model.net.dim=30", "model.net.dim=30 is not divisible by num_heads=4: each head gets dim / num_heads "
                         "channels (e.g. dim=32)"),
    ("model.net.dim=abc", "model.net.dim='abc': expected an integer >= 1"),
    ("model.net.num_kv_heads=3", "model.net.num_kv_heads=3 must divide num_heads=4 (grouped-query attention "
                                 "shares each key/value head among num_heads / num_kv_heads query heads)"),
    ("model.net.drop=1.5", "model.net.drop=1.5: expected a number in [0, 1)"),
    ("model.net.pool=max", "model.net.pool='max': expected one of cls, mean, cls_mean"),
    ("model.net.patch_size=6", "model.net.patch_size=6: the conv stem (stem=conv) needs one power of 2 >= 2 "
                               "(2, 4, 8, 16, ...); or use stem=patch"),
    ("model.net.patch_size=64", "model.net.patch_size=64 is larger than the image (img_size=28): the model "
                                "would see no patch"),
    ("+model.net.heads=4", "model.net.heads is not a parameter of VisionTransformer; its parameters are: img_size, "),
    ("model.optimizer.lr=-1", "model.optimizer.lr=-1: expected a number >= 0"),
    ("model.label_smoothing=1", "model.label_smoothing=1: expected a number in [0, 1)"),
    ("trainer.max_epochs=abc", "trainer.max_epochs='abc': expected an integer >= -1 (-1 = no limit), or null"),
    ("trainer.limit_train_batches=1.5", "trainer.limit_train_batches=1.5: expected a number of batches (an integer "
                                        ">= 0) or a fraction in [0.0, 1.0]"),
    ("trainer.num_nodes=0", "trainer.num_nodes=0: expected an integer >= 1 (machines, each running trainer.devices "
                            "processes)"),
    ("threads=0", "threads=0: expected an integer >= 1, or null"),
    ("data.batch_size=0", "data.batch_size=0: expected an integer >= 1"),
    ("model.net.in_chans=3", "model.net.in_chans=3 but data.in_chans=1: the model must take what the data gives; set "
                             "data.in_chans instead (by default model.net.in_chans follows it)"),
    ("data.image_size=0", "model.net.img_size=0 (from data.image_size): expected an integer >= 1"),
    ("model.optimizer._target_=torch.optim.Nope", "model.optimizer._target_='torch.optim.Nope': no such class or "
                                                  "function (AttributeError: module 'torch.optim' has no attribute "
                                                  "'Nope')"),
    ("attention_kernel=fast", "attention kernel 'fast': expected one of fused, explicit, auto"),
    ("matmul_precision=fast", "matmul_precision='fast': expected one of highest, high, medium, or null"),
    ("sdpa_backends=[flash,fast]", "sdpa_backends=['flash', 'fast']: expected a list of the SDPA backends allowed to "
                                   "run, from flash, efficient, cudnn, math, or null"),
]


@pytest.mark.parametrize("override, message", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_a_bad_config_value_is_named_before_anything_is_built(override: str, message: str, tmp_path: Path) -> None:
    from utils.build import setup_runtime

    cfg = compose_config("train", [override], tmp_path)
    with pytest.raises(UserError) as err:
        setup_runtime(cfg)  # the first thing train() and evaluate() do: before data, weights or threads
    assert str(err.value).startswith(message) and (message.endswith(", ") or str(err.value) == message)


@pytest.mark.parametrize("model, override, message", [
    ("audio", "model.net.f_max=9000", "model.net.f_min=20.0, f_max=9000: expected f_min < f_max <= sample_rate / 2 = "
                                      "8000 Hz"),
    ("audio", "model.net.n_mels=300", "model.net.n_mels=300 is more mel bands than the 241 frequency bins of "
                                      "n_fft=480: some bands would be empty"),
    ("video", "model.net.attention=full", "model.net.attention='full': expected one of divided, joint"),
    ("translator", "model.beam_size=0", "model.beam_size=0: expected an integer >= 1"),
    ("translator", "data.bpe_vocab_size=3", "data.bpe_vocab_size=3: expected an integer >= 6 (the tokenizer's 4 "
                                            "special tokens and text)"),
    ("translator", "model.net.max_len=8", "model.net.max_len=8 is shorter than data.max_len=64: the data's sentences "
                                          "would not fit the model's position table"),
    ("lm", "model.net.block_size=32", "model.net.block_size=32 is shorter than data.block_size=64: the model would "
                                      "be trained on blocks longer than the context it takes"),
    ("audio", "model.net.sample_rate=8000", "model.net.sample_rate=8000 but data.sample_rate=16000: the model must "
                                            "take what the data gives; set data.sample_rate instead (by default "
                                            "model.net.sample_rate follows it)"),
])
def test_bad_values_of_the_other_models(model: str, override: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=f"^{message.replace('(', '[(]').replace(')', '[)]')}$"):
        check_model_config(compose_config("train", [f"model={model}", override], tmp_path))


def test_a_clip_shorter_than_one_patch_names_clip_seconds_and_the_shortest_that_works(tmp_path: Path) -> None:
    # The model's input width comes from data.clip_seconds: the message names that key, not the patch grid.
    run = f"hydra.run.dir={tmp_path / 'run'}"
    assert command("train.py", "model=audio", "data.clip_seconds=0.01", run) == (
        2, "", "error: model.net.clip_seconds=0.01 (from data.clip_seconds): 1 spectrogram frame(s) at "
               "hop_length=320, fewer than one patch (3 frames); expected clip_seconds >= 0.04 (640 samples at "
               "sample_rate=16000)\n")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_evaluate_and_export_check_their_own_keys(runs, tmp_path: Path, capsys) -> None:
    run = runs["vit"]
    assert command("evaluate.py", str(run), "average_last=0", f"hydra.run.dir={tmp_path / 'ev'}")[::2] \
        == (2, "error: average_last=0: expected an integer >= 1, or null\n")
    assert command("export.py", str(run), "format=xml", f"hydra.run.dir={tmp_path / 'ex'}")[::2] \
        == (2, "error: format='xml': expected one of onnx, safetensors, both\n")


def test_a_bad_data_value_names_the_group(tmp_path: Path) -> None:
    cfg = compose_config("train", ["data.val_fraction=0"], tmp_path)
    with pytest.raises(UserError, match=r"^data: val_fraction=0; expected a number strictly between 0 and 1$"):
        build_datamodule(cfg)  # the data module's own refusal, with the config group named


def test_the_command_line_prints_one_line_and_exits_2_for_a_user_error(tmp_path: Path) -> None:
    proc = run_cli("train.py", "model.net.num_heads=0", f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert (proc.returncode, proc.stderr) == (2, "error: model.net.num_heads=0: expected an integer >= 1\n")


def test_hydra_config_errors_keep_their_key_names(tmp_path: Path, capsys) -> None:
    run = f"hydra.run.dir={tmp_path / 'run'}"
    assert command("train.py", "model.net.dimm=3", run) == (
        2, "", "error: Could not override 'model.net.dimm'. To append to your config use +model.net.dimm=3; Key "
               "'dimm' is not in struct\n")
    code, out, err = command("train.py", "model=nope", run)
    assert (code, out) == (2, "") and err.startswith("error: In 'train': Could not find 'model/nope'; Available "
                                                     "options in 'model': audio, ")
    assert command("evaluate.py", run) == (
        2, "", "error: ckpt_path is required: give ckpt_path=<value> on the command line\n")


def test_a_checkpoint_of_another_size_or_model_is_one_line_naming_both(runs, tmp_path: Path) -> None:
    ckpt = runs["vit"] / "checkpoints" / "best.ckpt"
    with pytest.raises(UserError) as err:  # resuming with another width
        train_in_process("vit", tmp_path / "a", f"ckpt_path={runs['vit']}", "model.net.dim=64")
    assert str(err.value).startswith(
        f"checkpoint {ckpt} does not fit the model of this run: both are models.vit.VisionTransformer but "
        f"model.net.dim=32 in the checkpoint, 64 in the config; ")
    assert "\n" not in str(err.value) and "tensor(s) differ in shape (first: net." in str(err.value)
    with pytest.raises(UserError, match=rf"^checkpoint {ckpt} does not fit the model of this run: the checkpoint holds "
                                        r"a models.vit.VisionTransformer, the config builds a "
                                        r"models.audio.AudioSpectrogramTransformer; "):
        train_in_process("audio", tmp_path / "b", f"ckpt_path={runs['vit']}")
    # A checkpoint written before configs were stored inside, beside a config of another size:
    old = tmp_path / "old"
    shutil.copytree(runs["vit"], old)
    state = load_checkpoint(old / "checkpoints" / "best.ckpt")
    stored = state.pop(CONFIG_KEY)
    torch.save(state, old / "checkpoints" / "best.ckpt")
    stored["model"]["net"]["depth"] = 2
    (old / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(stored), old / ".hydra" / "config.yaml")
    with pytest.raises(UserError, match=r"does not fit the model of this run: both are models.vit.VisionTransformer; "
                                        r"\d+ missing \(first: net.encoder.blocks.1."):
        load_trained(old)


def test_checkpoint_with_nan_weights_is_refused_at_load(runs, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs["vit"], run)
    ckpt = load_checkpoint(run / "checkpoints" / "best.ckpt")
    ckpt["state_dict"]["net.head.bias"][0] = float("nan")
    torch.save(ckpt, run / "checkpoints" / "best.ckpt")
    with pytest.raises(UserError, match=r"holds NaN or infinite weights \(1 tensor\(s\), first: net.head.bias\)"):
        load_trained(run)


def test_a_sharded_checkpoint_is_refused_with_the_command_that_consolidates_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    fsdp, fsdp2 = run / "checkpoints" / "best.ckpt", run / "checkpoints" / "last.ckpt"
    for folder in (fsdp, fsdp2):  # the layout torch.distributed.checkpoint and Lightning write
        folder.mkdir(parents=True)
        (folder / ".metadata").write_bytes(b"never unpickled")
        (folder / "__0_0.distcp").write_bytes(b"")
    strategy = {"_target_": "lightning.pytorch.strategies.ModelParallelStrategy"}
    torch.save({CONFIG_KEY: {"trainer": {"strategy": strategy}}}, fsdp2 / "meta.pt")  # what Lightning writes, cut
    expected = ("error: '{0}' is a sharded checkpoint (a directory of per-process shards); make one file of it first: "
                "python -m lightning.{1}.utilities.consolidate_checkpoint {0} (writes {0}.consolidated), then pass "
                "that file\n")
    assert command("evaluate.py", f"ckpt_path={run}", f"hydra.run.dir={tmp_path / 'ev'}") == (
        2, "", expected.format(fsdp, "pytorch"))
    assert command("export.py", str(fsdp2), f"hydra.run.dir={tmp_path / 'ex'}") == (
        2, "", expected.format(fsdp2, "fabric"))
    code, _, err = command("train.py", f"ckpt_path={run}", f"hydra.run.dir={tmp_path / 'tr'}")  # resume: last first
    assert (code, err) == (2, expected.format(fsdp2, "fabric"))


@pytest.mark.parametrize("devices", ["-1", "auto"])
def test_fsdp2_needs_a_number_of_devices(devices: str, tmp_path: Path) -> None:
    from utils.build import setup_runtime

    cfg = compose_config("train", ["trainer=fsdp2", f"trainer.devices={devices}"], tmp_path)
    shown = -1 if devices == "-1" else repr(devices)
    with pytest.raises(UserError, match=rf"^trainer.strategy.data_parallel_size={shown} \(from trainer.devices\): "
                                        r"expected a number of processes >= 1 \(trainer=fsdp2 sizes its mesh from "
                                        r"trainer.devices: give trainer.devices as a number\)$"):
        setup_runtime(cfg)


def test_a_non_utf8_tsv_names_the_file_and_line(tmp_path: Path) -> None:
    from data.text import read_tsv

    path = tmp_path / "pairs.tsv"
    path.write_bytes("Hello.\tHallo.\nCoffee.\tCaf\xe9.\n".encode("latin-1"))
    with pytest.raises(FileFormatError, match=rf"^data=tsv: {path} is not UTF-8 text: byte b'\\xe9' at line 2 "
                                              r"\(offset 25\) cannot be decoded; save the file as UTF-8$"):
        read_tsv(path)
    path.write_bytes("Hello.\tHallo.\n".encode("utf-16"))  # with its byte-order mark: read
    assert [(p.source, p.target) for p in read_tsv(path)] == [("Hello.", "Hallo.")]


@pytest.mark.parametrize("content, message", [
    (None, "data=text_corpus: file '{path}' does not exist; expected a UTF-8 text file (Tiny Shakespeare: "
           "data/tinyshakespeare/input.txt of github.com/karpathy/char-rnn)"),
    ("  \n\n", "data=text_corpus: {path} holds no text (it is empty or blank)"),
    ("To be, or not to be, that is the question.\n" * 20,
     "data=text_corpus: the val split (5% of {path}) has 43 characters, not more than data.block_size=64; give more "
     "text or a smaller block_size"),
], ids=["missing", "blank", "shorter_than_a_block"])
def test_a_text_corpus_that_is_missing_blank_or_shorter_than_a_block_is_refused(content, message, tmp_path) -> None:
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    run = tmp_path / "run"
    assert command("train.py", "model=lm", f"data.path={path}", "threads=1", f"hydra.run.dir={run}")[::2] == (
        2, f"error: {message.format(path=path)}\n")
    assert not (run / "checkpoints").exists()  # refused while the data module is built, before training


def test_an_image_folder_with_a_corrupt_png_is_refused_before_training(tmp_path: Path) -> None:
    from data.images import ImageDataModule

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(4):
            write_png(torch.full((1, 8, 8), 40 * i, dtype=torch.uint8), tmp_path / c / f"{i}.png")
    _png16(tmp_path / "a" / "deep.png", np.full((8, 8), 65535))  # 16 bits: fine, scaled
    bad = tmp_path / "b" / "2.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    dm = ImageDataModule(dataset="image_folder", root=str(tmp_path), image_size=8, in_chans=1)
    with pytest.raises(FileFormatError, match=rf"^image_folder: 1 of 9 files cannot be read as images: {bad} \("):
        dm.setup("fit")  # Lightning's first call, before any training step
    bad.unlink()
    dm.setup("fit")
    images = {int(x.max()) for x, _ in (dm.train_dataset[i] for i in range(len(dm.train_dataset)))}
    assert images <= {0, 40, 80, 120, 255}  # deep.png is white (65535 -> 255), not clipped noise


def test_a_bug_keeps_its_traceback() -> None:
    with pytest.raises(ZeroDivisionError):
        user_errors(lambda: 1 / 0)()
    with pytest.raises(KeyError):
        run_hydra(lambda: {}["missing"])
    with pytest.raises(SystemExit) as exit:
        user_errors(lambda: (_ for _ in ()).throw(UserError("bad value")))()
    assert exit.value.code == 2


def test_the_docs_table_names_tests_that_exist() -> None:
    table = (ROOT / "docs" / "errors.md").read_text()
    names = {line.rsplit("`", 2)[-2] for line in table.splitlines() if line.startswith("|") and "`test_" in line}
    # This file's tests, and those of the families' own error files (tests/test_errors_<family>.py).
    here = {name for name in globals() if name.startswith("test_")}
    for path in sorted((ROOT / "tests").glob("test_errors_*.py")):
        here |= set(re.findall(r"^def (test_\w+)", path.read_text(), flags=re.M))
    assert names and names <= here, sorted(names - here)
    assert here - {"test_the_docs_table_names_tests_that_exist"} <= names, sorted(here - names)


# --- photos of another layout or size, to a pretrained RGB ViT ----------------------------------------------


@pytest.fixture(scope="module")
def rgb_vit(tmp_path_factory) -> Path:
    """A tiny timm ViT (RGB, 32 x 32 pixels, patch 8, random weights) saved as a hub folder."""
    import timm
    from timm.models._hub import save_for_hf

    folder = tmp_path_factory.mktemp("rgb_vit")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                              depth=2, num_heads=2, num_classes=3)
    save_for_hf(model.eval(), str(folder), safe_serialization=True)
    return folder


def test_a_grayscale_or_rgba_photo_is_converted_to_rgb_and_said(rgb_vit, tmp_path: Path, capsys) -> None:
    g = np.random.default_rng(0)
    rgb = g.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    gray, rgba = tmp_path / "gray.png", tmp_path / "rgba.png"
    Image.fromarray(rgb[..., 0]).save(gray)
    Image.fromarray(np.dstack([rgb, np.full((32, 32), 128, np.uint8)])).save(rgba)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb[..., 0]] * 3)).save(tmp_path / "gray3.png")
    code, out, err = predict_cli(capsys, str(rgb_vit), str(gray), str(rgba), str(tmp_path / "rgb.png"),
                                 str(tmp_path / "gray3.png"), "--image-size", "32")  # no crop: notes of layout only
    lines = out.splitlines()
    assert code == 0 and len(lines) == 4
    assert lines[1].split(": ", 1)[1] == lines[2].split(": ", 1)[1]  # RGBA: its colour channels
    assert lines[0].split(": ", 1)[1] == lines[3].split(": ", 1)[1]  # grayscale: copied to three channels
    assert err.splitlines() == [f"note: {gray}: grayscale copied to RGB", f"note: {rgba}: transparency dropped"]


def test_an_image_size_no_multiple_of_the_patch_is_rounded_and_said(rgb_vit, tmp_path: Path, capsys) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(photo)
    code, out, err = predict_cli(capsys, str(rgb_vit), str(photo), "--image-size", "70x45")
    assert code == 0 and out.startswith(f"{photo}: ")
    assert err == (f"note: {photo}: --image-size 70x45 is no multiple of the patch (8x8): 72x48 used; position "
                   f"table of 4x4 patches resized to 9x6; resized from 70x50 to 72x48\n")
    code, out, err = predict_cli(capsys, str(rgb_vit), str(photo), "--image-size", "native")
    assert code == 0 and "the photo's own size 70x50 is no multiple of the patch (8x8): 72x48 used" in err
    code, out, err = predict_cli(capsys, str(rgb_vit), str(photo), "--image-size", "32")
    assert code == 0 and err == f"note: {photo}: resized from 70x50 to 32x32\n"  # the table's own grid


def test_an_image_too_large_for_the_patch_limit_is_refused_naming_sizes(rgb_vit, tmp_path: Path, capsys) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(photo)
    assert predict_cli(capsys, str(rgb_vit), str(photo), "--image-size", "1000x600") == (
        2, "", ("error: --image-size 1000x600 makes 125x75 = 9375 patches; predict.py takes at most 4096 "
                "(e.g. 512x512 at patch 8x8); the position table holds 4x4\n"))
    with pytest.raises(SystemExit):  # argparse: exit 2, naming the forms it takes
        predict.parser().parse_args([str(rgb_vit), str(photo), "--image-size", "big"])
    assert "--image-size 'big': expected a size in pixels (224), WxH (320x224) or native" in capsys.readouterr().err


# --- a wav to a converted Whisper source (tests/helpers/whisper_tiny.py) -----------------------------------------


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory) -> Path:
    from helpers.whisper_tiny import make_tiny_whisper

    return make_tiny_whisper(tmp_path_factory.mktemp("whisper") / "tiny", std=1.0)


def _tone(path: Path, seconds: float, rate: int = 16000, channels: int = 1) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    sf.write(str(path), np.stack([wave] * channels, 1) if channels > 1 else wave, rate, subtype="FLOAT")
    return path


def test_long_and_stereo_audio_run_in_windows_and_are_mixed_with_notes(tiny_whisper, tmp_path: Path) -> None:
    folder = tiny_whisper
    predictor = load_trained(str(folder))
    notes: list[str] = []
    wav = _tone(tmp_path / "long.wav", 31, rate=8000, channels=2)
    p = predictor.predict(read_input(predictor, str(wav), notes), notes=notes)
    assert p.text is not None
    joined = "\n".join(notes)
    assert "mixed 2 channels to mono" in joined and "resampled from 8000 Hz to 16000 Hz" in joined
    assert "31 s long: transcribed in 2 windows of 30 s, one after another" in joined


def test_an_empty_or_nan_wav_is_one_line_and_a_long_one_runs_in_windows(tiny_whisper, tmp_path: Path,
                                                                        capsys) -> None:
    folder = tiny_whisper
    empty, nan = tmp_path / "empty.wav", tmp_path / "nan.wav"
    sf.write(str(empty), np.zeros(0, np.float32), 16000)
    wave = np.zeros(1600, np.float32)
    wave[100] = np.nan
    sf.write(str(nan), wave, 16000, subtype="FLOAT")
    for path, message in ((empty, f"error: empty audio file (0 samples): {empty}"),
                          (nan, f"error: audio file {nan} holds 1 NaN or infinite sample(s), the first at 0.006 s; "
                                f"expected finite samples")):
        capsys.readouterr()
        assert predict.main([str(folder), str(path), "--threads", "1"]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == message
    long = _tone(tmp_path / "long.wav", 31)
    assert predict.main([str(folder), str(long), "--threads", "1"]) == 0
    assert "31 s long: transcribed in 2 windows of 30 s, one after another" in capsys.readouterr().err


def test_long_durations_in_notes_are_whole_seconds() -> None:
    from data.audio import duration_text

    assert [duration_text(s) for s in (0.5, 31.0, 66.5, 999.4, 1001.2, 4000.0)] == ["0.5", "31", "66.5", "999",
                                                                                  "1,001", "4,000"]
