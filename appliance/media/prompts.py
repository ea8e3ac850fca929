"""Voice prompts: made at build time with espeak-ng, found and loaded at run time.

Where prompts come from
-----------------------
`make prompts` (a step of `make run` and `make test`) installs Debian's
`espeak-ng` when it is missing and runs ``python -m appliance.media.prompts
generate``, which speaks every text of `TEXTS` into

    appliance/media/voice/<lang>/<name>.wav        (generated, git-ignored)

English with the ``en`` voice, Chinese with ``cmn`` (Mandarin; Debian's
espeak-ng 1.51 has ``cmn``, ``cmn-latn-pinyin`` and ``yue``). Nothing is
generated or downloaded while the daemon runs.

At run time `Prompts` looks for ``<name>.*`` (any format FFmpeg reads: wav,
mp3, ogg, ...) first in ``<data>/prompts/<lang>/`` (an office's own
recordings), then in the generated folder. The file is decoded and resampled
by PyAV (`tones.load_audio`) to the mixer's rate and its peak set to
`PEAK_DBFS`. A prompt that is missing or unreadable is logged once and a
short tone is played in its place, so a box without prompts still works.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .tones import load_audio, silence, tone

log = logging.getLogger("appliance.media.prompts")

#: The folder `make prompts` writes to, inside the package.
BUILTIN_DIR = Path(__file__).resolve().parent / "voice"

LANGUAGES = ("en", "zh")

#: espeak-ng voice per prompt language.
VOICES = {"en": "en", "zh": "cmn"}

#: What each prompt says, by language.
TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "enter_pin": "Please enter the conference PIN, followed by the pound key.",
        "wrong_pin": "That PIN is not correct.",
        "welcome": "Welcome to the conference.",
        "goodbye": "Goodbye.",
    },
    "zh": {
        "enter_pin": "请输入会议密码，以井号键结束。",
        "wrong_pin": "密码错误。",
        "welcome": "欢迎加入会议。",
        "goodbye": "再见。",
    },
}

NAMES = tuple(TEXTS["en"])

#: Peak level prompts are scaled to (dBFS): loud enough, with headroom in the mix.
PEAK_DBFS = -6.0
#: Silence kept before and after the speech of a prompt file (seconds).
EDGE = 0.05

_EXTENSIONS = (".wav", ".ogg", ".opus", ".mp3", ".flac")


def fallback_tone(name: str, rate: int) -> np.ndarray:
    """The tone played when prompt `name` has no file: a beep the caller can tell apart."""
    if name == "wrong_pin":  # two low beeps
        return np.concatenate([tone(330, 0.15, rate), silence(0.08, rate), tone(330, 0.15, rate)])
    if name == "goodbye":
        return tone(330, 0.4, rate)
    if name == "welcome":
        return np.concatenate([tone(523.25, 0.12, rate), silence(0.03, rate),
                               tone(659.25, 0.18, rate)])
    return tone(440, 0.3, rate)  # enter_pin and anything else: one beep


class Prompts:
    """Prompt audio by (language, name) at a given rate, cached; never raises."""

    def __init__(self, dirs: Sequence[Path | str] | None = None) -> None:
        self.dirs = [Path(d) for d in (dirs if dirs is not None else [BUILTIN_DIR])]
        self._cache: dict[tuple[str, str, int], np.ndarray] = {}
        self._missing: set[tuple[str, str]] = set()

    @classmethod
    def for_data_dir(cls, data: Path | str | None) -> Prompts:
        dirs = [Path(data) / "prompts"] if data is not None else []
        return cls([*dirs, BUILTIN_DIR])

    def find(self, lang: str, name: str) -> Path | None:
        for base in self.dirs:
            folder = base / lang
            for ext in _EXTENSIONS:
                path = folder / f"{name}{ext}"
                if path.is_file():
                    return path
        return None

    def get(self, lang: str, name: str, rate: int = 8000) -> np.ndarray:
        """Mono int16 samples at `rate`: the recorded prompt, or its fallback tone."""
        key = (lang, name, rate)
        pcm = self._cache.get(key)
        if pcm is None:
            pcm = self._load(lang, name, rate)
            self._cache[key] = pcm
        return pcm

    def is_available(self, lang: str, name: str) -> bool:
        return self.find(lang, name) is not None

    def preload(self, rates: Iterable[int] = (8000, 16000),
                languages: Iterable[str] = LANGUAGES) -> int:
        """Load every prompt at `rates` (blocking: run it in an executor). Returns how
        many were found as files."""
        found = 0
        for lang in languages:
            for name in NAMES:
                for rate in rates:
                    self.get(lang, name, rate)
                found += self.is_available(lang, name)
        return found

    def _load(self, lang: str, name: str, rate: int) -> np.ndarray:
        path = self.find(lang, name)
        if path is not None:
            try:
                pcm = load_audio(path, rate)
                if pcm.size:
                    return _normalize(pcm, rate)
                problem = f"{path} holds no audio"
            except Exception as e:  # noqa: BLE001 - a bad file must not take a call down
                problem = f"{path} cannot be read: {e}"
        else:
            where = ", ".join(str(d / lang) for d in self.dirs)
            problem = f"no file for it in {where} (run `make prompts`)"
        if (lang, name) not in self._missing:
            self._missing.add((lang, name))
            log.warning("prompt %s/%s: %s; playing a tone instead", lang, name, problem)
        return fallback_tone(name, rate)


def _normalize(pcm: np.ndarray, rate: int) -> np.ndarray:
    """Trim the silence around the speech (keeping `EDGE` seconds) and set the peak."""
    level = np.abs(pcm.astype(np.int32))
    peak = int(level.max()) if level.size else 0
    if peak == 0:
        return pcm
    loud = np.flatnonzero(level > peak * 0.02)
    edge = round(EDGE * rate)
    pcm = pcm[max(0, loud[0] - edge):loud[-1] + edge + 1]
    target = 32767.0 * 10 ** (PEAK_DBFS / 20.0)
    return np.clip(np.round(pcm.astype(np.float64) * (target / peak)), -32768,
                   32767).astype(np.int16)


# -- build time -------------------------------------------------------------------------------

def espeak_binary() -> str | None:
    return shutil.which("espeak-ng")


def generate(out_dir: Path | str = BUILTIN_DIR, *, languages: Iterable[str] = LANGUAGES,
             espeak: str | None = None, force: bool = False) -> list[Path]:
    """Speak every prompt into ``out_dir/<lang>/<name>.wav`` with espeak-ng.

    Files already there are kept unless `force`. Raises RuntimeError when
    espeak-ng is not installed or fails.
    """
    binary = espeak or espeak_binary()
    if binary is None:
        raise RuntimeError("espeak-ng is not installed (Debian package espeak-ng)")
    out = Path(out_dir)
    made = []
    for lang in languages:
        folder = out / lang
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in TEXTS[lang].items():
            path = folder / f"{name}.wav"
            if path.exists() and not force:
                continue
            tmp = path.with_suffix(".tmp.wav")
            proc = subprocess.run([binary, "-v", VOICES[lang], "-s", "150", "-w", str(tmp), text],
                                  capture_output=True, text=True, timeout=60)
            if proc.returncode != 0 or not tmp.exists():
                tmp.unlink(missing_ok=True)
                raise RuntimeError(f"espeak-ng failed for {lang}/{name}: {proc.stderr.strip()}")
            tmp.replace(path)
            made.append(path)
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.media.prompts",
                                     description="Generate the voice prompts with espeak-ng.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="speak the prompts into WAV files")
    gen.add_argument("out", nargs="?", default=str(BUILTIN_DIR), help="output folder")
    gen.add_argument("--force", action="store_true", help="remake existing files")
    sub.add_parser("list", help="show where each prompt is found")
    args = parser.parse_args(argv)
    if args.command == "list":
        prompts = Prompts()
        for lang in LANGUAGES:
            for name in NAMES:
                print(f"{lang}/{name}: {prompts.find(lang, name) or 'missing'}")
        return 0
    try:
        made = generate(args.out, force=args.force)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        print(f"prompts: {e}", file=sys.stderr)
        return 1
    print(f"prompts: {len(made)} made in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
