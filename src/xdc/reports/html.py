"""Small writers for self-contained HTML reports: page and tags, and the media files they show
(frame strips as JPEG, audio as WAV, spectrograms as PNG). Paths in the page are relative, so
the report folder can be moved or zipped as a whole."""

from __future__ import annotations

import html
import wave
from pathlib import Path

import numpy as np

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
.cluster { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 0.8em; margin: 0.8em 0; }
.cluster h3 { margin: 0 0 0.3em; font-size: 1em; }
.members { display: flex; flex-wrap: wrap; gap: 0.8em; }
img { max-width: 100%; }  /* wide figures (filters) fit the page */
.member { font-size: 0.75em; width: 300px; }
/* frames and spectrogram at the same width: they share one time axis */
.member img { display: block; width: 100%; image-rendering: pixelated; }
.member audio { width: 100%; height: 28px; }
.member img.spectrogram { height: 64px; }  /* same size whatever the clip length */
.axis { display: flex; justify-content: space-between; color: #888; border-top: 1px solid #aaa; }
img.plot { display: inline-block; margin: 0.3em; vertical-align: top; }
.muted { color: #888; }
nav a { margin-right: 1em; }
"""


def escape(text) -> str:
    return html.escape(str(text), quote=True)


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{escape(title)}</h1>\n{body}\n</body>\n</html>\n")


def table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>\n" for row in rows)
    return f"<table>\n<tr>{head}</tr>\n{body}</table>\n"


def image_tag(src: str, alt: str, css_class: str = "") -> str:
    extra = f' class="{escape(css_class)}"' if css_class else ""
    return f'<img src="{escape(src)}" alt="{escape(alt)}"{extra} loading="lazy">'


def link(href: str, text: str) -> str:
    return f'<a href="{escape(href)}">{escape(text)}</a>'


def time_axis(seconds: float) -> str:
    """A bar under a frame strip and spectrogram of the same width: 0 to `seconds`."""
    return f'<div class="axis"><span>0 s</span><span>{seconds / 2:.1f} s</span><span>{seconds:.1f} s</span></div>'


def audio_tag(src: str) -> str:
    return f'<audio controls preload="none" src="{escape(src)}"></audio>'


def write_strip(frames: np.ndarray, path: str | Path, quality: int = 85) -> Path:
    """T×H×W×3 uint8 frames side by side as one JPEG (or PNG, by the file's suffix)."""
    from PIL import Image

    strip = np.concatenate(list(frames), axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(strip).save(path, quality=quality)
    return path


def write_wav(samples: np.ndarray, rate: int, path: str | Path) -> Path:
    """Mono float samples in [-1, 1] as 16-bit PCM WAV (plays in every browser)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = (np.clip(np.asarray(samples, np.float32), -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(int(rate))
        out.writeframes(pcm.tobytes())
    return path


def write_spectrogram(logmel: np.ndarray, path: str | Path, scale: int = 2) -> Path:
    """An n_mels×frames log-mel as a PNG (low frequencies at the bottom, viridis colours)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import cm
    from PIL import Image

    values = np.asarray(logmel, np.float32)
    low, high = np.percentile(values, 1), np.percentile(values, 99)
    scaled = np.clip((values - low) / max(high - low, 1e-6), 0, 1)[::-1]
    rgb = (cm.viridis(scaled)[..., :3] * 255).astype(np.uint8)
    image = Image.fromarray(rgb).resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
