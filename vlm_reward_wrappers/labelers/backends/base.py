"""The chat backend interface and the image encoding every backend accepts."""

from __future__ import annotations

import abc
import base64
from typing import Dict, List, Optional, Sequence

import numpy as np

from vlm_reward_wrappers.frames import png_bytes, resize_longer_side

#: How a chat request places images and their captions: "interleaved" (text and images in order, as
#: most templates and every OpenAI-compatible server keep them) or "captioned" (one message per image,
#: its caption after it, for templates that put all of a message's images before its text).
LAYOUTS = ("interleaved", "captioned")


def frame_to_data_uri(frame: np.ndarray, query_image_size: Optional[int] = None) -> str:
    """A ``data:image/png;base64,...`` URI of a frame, lossless, the image format every backend accepts.

    :param frame: (H, W, 3) uint8 rgb frame.
    :param query_image_size: if given, a frame whose longer side is larger is shrunk (aspect kept) to
        it, which caps the image tokens of tiling encoders; a smaller frame is sent as it is: enlarging
        adds no detail a VLM could judge.
    """
    return "data:image/png;base64," + base64.b64encode(png_bytes(resize_longer_side(frame, query_image_size))).decode("ascii")


class ChatBackend(abc.ABC):
    """Sends chat messages to a VLM at temperature 0 and returns the reply's text.

    Errors: :class:`~vlm_reward_wrappers.labelers.base.LabelerUnavailableError` when the model cannot be
    reached or is overloaded (worth retrying), :class:`~vlm_reward_wrappers.labelers.base.LabelerRefusedError`
    when it refuses the request. Backends never retry: the labelling service does, in one place.

    :param layout: "interleaved" or "captioned" (see :data:`LAYOUTS`).
    :param query_image_size: longer side in pixels of the images sent; None sends frames as they are.
    """

    #: Chat calls that may run at once.
    max_concurrency: int = 1

    def __init__(self, layout: str = "interleaved", query_image_size: Optional[int] = None) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if query_image_size is not None and query_image_size < 16:
            raise ValueError(f"query_image_size must be at least 16 pixels, got {query_image_size}")
        self.layout = layout
        self.query_image_size = query_image_size

    @property
    def backend_id(self) -> str:
        """Identifies the model and the settings that change its answers (part of every stored answer's key)."""
        return f"{type(self).__name__}(query_image_size={self.query_image_size})"

    def image_url(self, frame: np.ndarray) -> str:
        """How this backend sends a frame: a PNG data URI at its ``query_image_size``."""
        return frame_to_data_uri(frame, self.query_image_size)

    @abc.abstractmethod
    def chat(self, messages: List[Dict], max_tokens: int) -> str:
        """Send OpenAI-style chat messages at temperature 0 and return the reply's text."""

    def choice_probabilities(self, messages: List[Dict], choices: Sequence[str]) -> Dict[str, float]:
        """The probability of each choice (e.g. "0", "1", "-1") as the reply's first token, summing to 1."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot report answer probabilities: soft labels need a backend that can "
            "(LlamaCppBackend)"
        )

    def close(self) -> None:
        """Release the model, sessions or connections."""


#: Longer side of the query frames kept for a VLM whose backend sets no ``query_image_size``: rendered
#: frames up to this size are sent as rendered.
DEFAULT_QUERY_IMAGE_SIZE = 1024


class UsesChatBackend:
    """What a protocol asking its questions through a :class:`ChatBackend` shares: the backend, its
    concurrency and query-frame size as the labeler's, and closing it with the labeler."""

    def __init__(self, backend: ChatBackend) -> None:
        if not isinstance(backend, ChatBackend):
            raise TypeError(
                f"backend must be a ChatBackend (LlamaCppBackend, OpenAICompatibleBackend), got {type(backend).__name__}"
            )
        self.backend = backend

    @property
    def max_concurrency(self) -> int:
        return self.backend.max_concurrency

    @property
    def query_image_size(self) -> int:
        return self.backend.query_image_size or DEFAULT_QUERY_IMAGE_SIZE

    def close(self) -> None:
        self.backend.close()
