"""CLIP baselines (open-clip-torch, the ``[clip]`` extra): embeddings and a preference labeler.

- :class:`CLIPLabeler` prefers the frame whose CLIP embedding is closer (cosine) to the goal's.
- :class:`CLIPEmbedder` also serves :class:`~vlm_reward_wrappers.wrappers.CLIPRewardWrapper`, VLM-RM's
  per-step CLIP reward.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from vlm_reward_wrappers.labelers.base import Answer, Labeler, Query
from vlm_reward_wrappers.torchvision_compat import import_torchvision
from vlm_reward_wrappers.label_store import FIRST, NO_PREFERENCE, SECOND


def _import_open_clip():
    try:
        import_torchvision()
        import open_clip
    except ImportError as error:
        raise ImportError("CLIP labelers need open-clip-torch: pip install 'vlm-reward-wrappers[clip]'") from error
    return open_clip


class CLIPEmbedder:
    """Unit-norm CLIP embeddings of frames and texts, from an open_clip model.

    :param model_name: an open_clip architecture ("ViT-B-32", "ViT-L-14", ...; ``open_clip.list_models()``).
    :param checkpoint_path: a local checkpoint file with the weights (state dict), the way to load
        weights offline.
    :param pretrained: an open_clip weight tag ("openai", "laion2b_s34b_b79k", ...), which downloads and
        so works only where the model hub is reachable; or "random" for untrained weights (tests only).
        Exactly one of ``checkpoint_path`` and ``pretrained`` must be given.
    :param device: torch device of the model.
    :param image_resize_mode: how frames are fitted to the model's input: "squash" (default) keeps
        the whole frame, where open_clip's usual "shortest" crops the sides of wide frames away.
    :param batch_size: frames per forward pass.
    :param clip_kwargs: further ``open_clip.create_model_and_transforms`` arguments, e.g.
        ``force_image_size=64`` (a smaller, faster input).
    """

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        checkpoint_path: Optional[Union[str, Path]] = None,
        pretrained: Optional[str] = None,
        device: Union[str, torch.device] = "cpu",
        image_resize_mode: str = "squash",
        batch_size: int = 64,
        **clip_kwargs: Any,
    ) -> None:
        if (checkpoint_path is None) == (pretrained is None):
            raise ValueError(
                f"give exactly one of checkpoint_path= (a local weights file, the way to load offline) and "
                f"pretrained= (an open_clip tag such as 'openai', downloaded from the hub; or 'random' for untrained "
                f"weights, which give meaningless rewards); got checkpoint_path={checkpoint_path!r}, "
                f"pretrained={pretrained!r}"
            )
        if checkpoint_path is not None and not Path(checkpoint_path).is_file():
            raise FileNotFoundError(
                f"CLIP checkpoint {str(checkpoint_path)!r} does not exist: save one where the hub is reachable, e.g. "
                f"torch.save(open_clip.create_model('{model_name}', pretrained='openai').state_dict(), path)"
            )
        open_clip = _import_open_clip()
        self.model_name = model_name
        self.weights = Path(checkpoint_path).name if checkpoint_path is not None else pretrained
        self.device = torch.device(device)
        self.batch_size = batch_size
        source = str(checkpoint_path) if checkpoint_path is not None else (None if pretrained == "random" else pretrained)
        try:
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=source, device=self.device, image_resize_mode=image_resize_mode, **clip_kwargs
            )
        except (OSError, RuntimeError) as error:
            if pretrained in (None, "random"):
                raise
            raise RuntimeError(
                f"could not load the {pretrained!r} weights of {model_name} (is the model hub reachable?); "
                "offline, pass checkpoint_path= a local copy of the weights"
            ) from error
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)

    @property
    def logit_scale(self) -> float:
        """The model's learned inverse temperature of cosine similarities (100 for trained CLIPs)."""
        return float(self.model.logit_scale.detach().exp())

    @torch.no_grad()
    def embed_frames(self, frames: Union[np.ndarray, Sequence[np.ndarray]]) -> np.ndarray:
        """(N, H, W, 3) uint8 frames -> (N, D) float32 unit-norm embeddings."""
        out = []
        for start in range(0, len(frames), self.batch_size):
            chunk = frames[start : start + self.batch_size]
            batch = torch.stack([self.preprocess(Image.fromarray(np.asarray(f, dtype=np.uint8))) for f in chunk])
            out.append(self._unit(self.model.encode_image(batch.to(self.device))))
        return np.concatenate(out)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """N texts -> (N, D) float32 unit-norm embeddings."""
        return self._unit(self.model.encode_text(self.tokenizer(list(texts)).to(self.device)))

    @staticmethod
    def _unit(embeddings: torch.Tensor) -> np.ndarray:
        embeddings = embeddings.float()
        return (embeddings / embeddings.norm(dim=-1, keepdim=True)).cpu().numpy()


def make_embedder(model_name: Union[str, CLIPEmbedder], clip_kwargs: Dict[str, Any]) -> CLIPEmbedder:
    """The embedder given, or one built from an architecture name and :class:`CLIPEmbedder` arguments."""
    if isinstance(model_name, CLIPEmbedder):
        if clip_kwargs:
            raise ValueError(f"a CLIPEmbedder was given, so these arguments would be ignored: {sorted(clip_kwargs)}")
        return model_name
    return CLIPEmbedder(model_name, **clip_kwargs)


class CLIPLabeler(Labeler):
    """Prefers the frame more similar to the goal in CLIP's embedding space (RL-VLM-F's CLIP baseline).

    The preference is the sign of ``cos(frame_b, goal) - cos(frame_a, goal)``; differences within
    ``margin`` are -1 (no preference). ``Answer.soft`` is ``sigmoid(logit_scale * difference)``.

    :param model_name: an open_clip architecture, or a :class:`CLIPEmbedder` to share (its weights).
    :param margin: similarity differences at most this are answered -1.
    :param clip_kwargs: the :class:`CLIPEmbedder`'s other arguments: ``checkpoint_path`` (local
        weights), ``pretrained`` (a weight tag; needs the model hub), ``device``, ...
    """

    batch_size = 64
    prompt_version = "clip-cosine-v1"
    #: CLIP models read 224 px images; larger frames would only be shrunk by its preprocessing.
    query_image_size = 224

    def __init__(
        self, model_name: Union[str, CLIPEmbedder] = "ViT-B-32", margin: float = 0.0, **clip_kwargs: Any
    ) -> None:
        self.embedder = make_embedder(model_name, clip_kwargs)
        self.margin = margin
        self._goal_embeddings: Dict[str, np.ndarray] = {}

    @property
    def labeler_id(self) -> str:
        return f"CLIPLabeler({self.embedder.model_name}, weights={self.embedder.weights}, margin={self.margin})"

    def compare(self, queries: Sequence[Query], goal: str) -> List[Answer]:
        if goal not in self._goal_embeddings:
            self._goal_embeddings[goal] = self.embedder.embed_texts([goal])[0]
        frames = [q.frame_a for q in queries] + [q.frame_b for q in queries]
        similarity = self.embedder.embed_frames(frames) @ self._goal_embeddings[goal]
        sim_a, sim_b = similarity[: len(queries)], similarity[len(queries) :]
        answers = []
        for a, b in zip(sim_a, sim_b):
            difference = float(b - a)
            preference = NO_PREFERENCE if abs(difference) <= self.margin else (SECOND if difference > 0 else FIRST)
            soft = 1.0 / (1.0 + np.exp(-self.embedder.logit_scale * difference))
            answers.append(Answer(preference, soft=float(soft), raw=f"similarity 1: {a:.5f}, similarity 2: {b:.5f}"))
        return answers
