"""The application's files: sample audio, user uploads, configuration and log directories.

Storage recovery and the post-recovery functional check need real files to lose, restore
and analyse. The audio is generated here (sine tones, a few seconds each) rather than
downloaded, so the sandbox builds offline and the bytes are reproducible. WAV is written
with the standard library; FLAC and MP3 with ``soundfile`` (libsndfile >= 1.1 writes MP3).
Every file is read back with mutagen, the same parser ``analysis-service`` uses, so a file
that the service would reject fails here, at creation.

All functions are idempotent: existing files are left as they are (a drill may be
comparing them against a backup), and new files appear atomically (temp file + rename).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import struct
import tempfile
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tracktion_sandbox import layout as layout_mod
from tracktion_sandbox.layout import SandboxLayout

log = logging.getLogger(__name__)

AMPLITUDE = 0.3


@dataclass(frozen=True)
class Tone:
    """A sample file: relative path, format, frequencies (a chord if several), shape."""

    relative_path: str
    audio_format: str  # "wav" | "flac" | "mp3"
    frequencies: tuple[float, ...]
    seconds: float
    sample_rate: int
    channels: int


SAMPLES: tuple[Tone, ...] = (
    Tone("wav/tone_a4_mono.wav", "wav", (440.0,), 2.0, 44100, 1),
    Tone("wav/chord_c_major_stereo.wav", "wav", (261.63, 329.63, 392.0), 3.0, 48000, 2),
    Tone("flac/tone_c5_mono.flac", "flac", (523.25,), 2.0, 44100, 1),
    Tone("flac/chord_a_minor_stereo.flac", "flac", (220.0, 261.63, 329.63), 3.0, 48000, 2),
    Tone("mp3/tone_e5_mono.mp3", "mp3", (659.25,), 2.0, 44100, 1),
    Tone("mp3/chord_g_major_stereo.mp3", "mp3", (196.0, 246.94, 293.66), 3.0, 44100, 2),
)
FUNCTIONAL_SAMPLE = Tone("sample.mp3", "mp3", (440.0, 554.37), 3.0, 44100, 2)

MUTAGEN_FORMATS = {"wav": "WAVE", "flac": "FLAC", "mp3": "MP3"}


class AudioGenerationError(RuntimeError):
    """A sample could not be written, or mutagen does not read it back as intended."""


def _frames(tone: Tone) -> list[tuple[float, ...]]:
    """Samples in [-1, 1], one tuple per frame; channels differ slightly so stereo is real."""
    count = int(tone.seconds * tone.sample_rate)
    fade = max(1, tone.sample_rate // 100)  # 10 ms fade in/out: no clicks at the edges
    frames = []
    for index in range(count):
        t = index / tone.sample_rate
        envelope = min(1.0, index / fade, (count - 1 - index) / fade)
        value = sum(math.sin(2 * math.pi * f * t) for f in tone.frequencies)
        value *= AMPLITUDE * envelope / len(tone.frequencies)
        frames.append(tuple(value * (1.0 - 0.2 * ch) for ch in range(tone.channels)))
    return frames


def _write_wav(path: Path, tone: Tone) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(tone.channels)
        out.setsampwidth(2)
        out.setframerate(tone.sample_rate)
        data = bytearray()
        for frame in _frames(tone):
            for value in frame:
                data += struct.pack("<h", int(round(value * 32767)))
        out.writeframes(bytes(data))


def _write_soundfile(path: Path, tone: Tone) -> None:
    try:
        import numpy as np
        import soundfile
    except ImportError as exc:
        raise AudioGenerationError(
            f"writing {tone.audio_format} needs the 'soundfile' and 'numpy' packages: {exc}"
        ) from exc
    samples = np.asarray(_frames(tone), dtype=np.float32)
    sf_format = {"flac": "FLAC", "mp3": "MP3"}[tone.audio_format]
    if sf_format not in soundfile.available_formats():
        raise AudioGenerationError(
            f"libsndfile {soundfile.__libsndfile_version__} cannot write {sf_format}"
            " (MP3 needs libsndfile >= 1.1)"
        )
    # soundfile picks the format from the name; the temp file's name ends in the suffix
    soundfile.write(str(path), samples, tone.sample_rate, format=sf_format)


WRITERS: dict[str, Callable[[Path, Tone], None]] = {
    "wav": _write_wav,
    "flac": _write_soundfile,
    "mp3": _write_soundfile,
}


def verify_audio(path: Path, expected_format: str) -> None:
    """Raise AudioGenerationError unless mutagen reads ``path`` as ``expected_format``."""
    import mutagen

    try:
        parsed = mutagen.File(path)
    except mutagen.MutagenError as exc:
        raise AudioGenerationError(f"{path}: mutagen cannot read it: {exc}") from exc
    expected = MUTAGEN_FORMATS[expected_format]
    if parsed is None or type(parsed).__name__ != expected:
        found = "nothing" if parsed is None else type(parsed).__name__
        raise AudioGenerationError(f"{path}: mutagen reads {found}, expected {expected}")
    if not parsed.info.length > 0:
        raise AudioGenerationError(f"{path}: mutagen reports no duration")


def write_tone(path: Path, tone: Tone) -> bool:
    """Write one sample unless it exists; return True when it was written."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        WRITERS[tone.audio_format](tmp, tone)
        verify_audio(tmp, tone.audio_format)
        tmp.chmod(0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("wrote %s", path)
    return True


def make_sample_audio(directory: Path) -> list[Path]:
    """Write the sample audio files (WAV, FLAC, MP3) under ``directory``; return their paths."""
    paths = []
    for tone in SAMPLES:
        path = directory / tone.relative_path
        write_tone(path, tone)
        paths.append(path)
    return paths


def make_functional_sample(layout: SandboxLayout) -> Path:
    """``test_data/sample.mp3``: the file the post-recovery functional check uploads."""
    path = layout.test_data / FUNCTIONAL_SAMPLE.relative_path
    write_tone(path, FUNCTIONAL_SAMPLE)
    return path


def _write_text_once(path: Path, text: str, mode: int) -> bool:
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    log.info("wrote %s", path)
    return True


def _app_json(layout: SandboxLayout) -> str:
    config = {
        "app": "tracktion",
        "environment": "sandbox",
        "storage": {
            "root": str(layout.app_data),
            "audio_files": str(layout.audio_files),
            "user_uploads": str(layout.user_uploads),
        },
        # Connection details only; the password comes from the environment, as in production.
        "database": {
            "host": layout_mod.HOST,
            "port": layout_mod.PRIMARY_PORT,
            "name": layout_mod.APP_DATABASE,
            "user": layout_mod.APP_USER,
            "password_env": "TRACKTION_DATABASE_URL",
        },
        "analysis": {"max_upload_mb": 50, "formats": ["wav", "flac", "mp3"]},
    }
    return json.dumps(config, indent=2) + "\n"


def _services_yaml() -> str:
    lines = ["# Tracktion services (sandbox)", "services:"]
    for name, port in layout_mod.SERVICE_PORTS.items():
        lines += [
            f"  {name}:",
            f"    port: {port}",
            f"    health_url: http://{layout_mod.HOST}:{port}/health",
        ]
    lines += [
        "load_balancer:",
        f"  admin_url: http://{layout_mod.HOST}:{layout_mod.LOAD_BALANCER_PORT}/api/v1/backends",
    ]
    return "\n".join(lines) + "\n"


def _logging_conf(layout: SandboxLayout) -> str:
    return (
        "[loggers]\nkeys=root\n\n"
        "[handlers]\nkeys=file\n\n"
        "[formatters]\nkeys=plain\n\n"
        "[logger_root]\nlevel=INFO\nhandlers=file\n\n"
        "[handler_file]\nclass=FileHandler\nformatter=plain\n"
        f"args=('{layout.app_logs / 'tracktion.log'}', 'a')\n\n"
        "[formatter_plain]\nformat=%(asctime)s %(levelname)s %(name)s: %(message)s\n"
    )


UPLOADS: dict[str, str] = {
    "user_1001/playlist.m3u": "#EXTM3U\n../../audio_files/wav/tone_a4_mono.wav\n"
    "../../audio_files/mp3/tone_e5_mono.mp3\n",
    "user_1002/notes.txt": "Set for Friday: open with the C major chord, close on A minor.\n",
}


def app_files(layout: SandboxLayout) -> list[Path]:
    """Create uploads, config (app.json 0644, services.yaml 0644, logging.conf 0640), logs,
    and ``test_data/sample.mp3`` for the functional check."""
    paths = [make_functional_sample(layout)]
    for relative, text in UPLOADS.items():
        path = layout.user_uploads / relative
        _write_text_once(path, text, 0o644)
        paths.append(path)
    for name, text, mode in (
        ("app.json", _app_json(layout), 0o644),
        ("services.yaml", _services_yaml(), 0o644),
        ("logging.conf", _logging_conf(layout), 0o640),
    ):
        path = layout.app_config / name
        _write_text_once(path, text, mode)
        paths.append(path)
    layout.app_logs.mkdir(parents=True, exist_ok=True)
    return paths


def seed_application_data(layout: SandboxLayout) -> list[Path]:
    """Everything the application's storage holds: audio, the functional sample, app files."""
    return make_sample_audio(layout.audio_files) + app_files(layout)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for written in seed_application_data(SandboxLayout()):
        print(written)
