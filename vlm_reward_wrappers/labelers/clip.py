"""CLIP baselines (open-clip-torch, the ``[clip]`` extra): a preference labeler and a direct reward.

- :class:`CLIPLabeler` prefers the frame whose CLIP embedding is closer (cosine) to the goal's.
- :class:`CLIPRewardWrapper` skips preferences: every step's reward is the frame's CLIP score, or
  VLM-RM's baseline-regularised score (Rocamonde et al., ICLR 2024), the baseline users compare
  RL-VLM-F against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import gymnasium as gym
import numpy as np
import torch
from PIL import Image

from vlm_reward_wrappers.labelers.base import FIRST, NO_PREFERENCE, SECOND, Answer, Labeler, Query
from vlm_reward_wrappers.labelers.torchvision_compat import import_torchvision
from vlm_reward_wrappers.wrappers import _check_render_mode


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
    :param pretrained: an open_clip weight tag ("openai", "laion2b_s34b_b79k", ...); downloads, so it
        works only where the model hub is reachable. With neither, the weights are random (tests).
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
        if checkpoint_path is not None and pretrained is not None:
            raise ValueError("give checkpoint_path (a local file) or pretrained (a hub tag), not both")
        if checkpoint_path is not None and not Path(checkpoint_path).is_file():
            raise FileNotFoundError(
                f"CLIP checkpoint {str(checkpoint_path)!r} does not exist: save one where the hub is reachable, e.g. "
                f"torch.save(open_clip.create_model('{model_name}', pretrained='openai').state_dict(), path)"
            )
        open_clip = _import_open_clip()
        self.model_name = model_name
        self.weights = Path(checkpoint_path).name if checkpoint_path is not None else (pretrained or "random")
        self.device = torch.device(device)
        self.batch_size = batch_size
        source = str(checkpoint_path) if checkpoint_path is not None else pretrained
        try:
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=source, device=self.device, image_resize_mode=image_resize_mode, **clip_kwargs
            )
        except (OSError, RuntimeError) as error:
            if pretrained is None:
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


def _embedder(model_name: Union[str, CLIPEmbedder], clip_kwargs: Dict[str, Any]) -> CLIPEmbedder:
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

    def __init__(
        self, model_name: Union[str, CLIPEmbedder] = "ViT-B-32", margin: float = 0.0, **clip_kwargs: Any
    ) -> None:
        self.embedder = _embedder(model_name, clip_kwargs)
        self.margin = margin
        self._goal_embeddings: Dict[str, np.ndarray] = {}

    @property
    def labeler_id(self) -> str:
        return f"CLIPLabeler({self.embedder.model_name}, weights={self.embedder.weights}, margin={self.margin})"

    def label(self, queries: Sequence[Query], goal: str) -> List[Answer]:
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


class CLIPRewardWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Replaces the env's reward with a CLIP score of each rendered frame; no preferences, no training.

    Without ``baseline`` the reward is the cosine similarity of frame and goal embeddings. With a
    baseline text (what the scene looks like without the goal, e.g. "a pole on a cart"), it is
    VLM-RM's baseline-regularised score on unit embeddings x (frame) and g (goal)::

        reward = 1 - 0.5 * ||(x - g) P||^2,   P = alpha d d^T / ||d||^2 + (1 - alpha) I,   d = g - b

    which projects out directions the goal and baseline texts do not differ in (alpha = 0 gives back
    the cosine similarity). The env's reward goes to ``info["gt_reward"]``.

    :param env: an env created with ``render_mode="rgb_array"``.
    :param goal: the task in words.
    :param baseline: the baseline text b, or None for the plain CLIP score.
    :param alpha: strength of the baseline regularisation in [0, 1].
    :param model_name: an open_clip architecture, or a :class:`CLIPEmbedder` to share.
    :param clip_kwargs: the :class:`CLIPEmbedder`'s other arguments (``checkpoint_path``, ...).
    """

    def __init__(
        self,
        env: gym.Env,
        goal: str,
        baseline: Optional[str] = None,
        alpha: float = 0.5,
        model_name: Union[str, CLIPEmbedder] = "ViT-B-32",
        **clip_kwargs: Any,
    ) -> None:
        _check_render_mode(env.render_mode, "CLIPRewardWrapper")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        # Not deep-copied: an embedder holds a model.
        gym.utils.RecordConstructorArgs.__init__(
            self, _disable_deepcopy=True, goal=goal, baseline=baseline, alpha=alpha, model_name=model_name,
            **clip_kwargs,
        )
        gym.Wrapper.__init__(self, env)
        self.embedder = _embedder(model_name, clip_kwargs)
        self.goal_embedding = self.embedder.embed_texts([goal])[0]
        dim = len(self.goal_embedding)
        #: (D, D) projection P; the identity without a baseline.
        self.projection = np.eye(dim, dtype=np.float32)
        if baseline is not None:
            direction = self.goal_embedding - self.embedder.embed_texts([baseline])[0]
            self.projection = (
                alpha * np.outer(direction, direction) / float(direction @ direction) + (1.0 - alpha) * self.projection
            ).astype(np.float32)

    def clip_reward(self, frames: Union[np.ndarray, Sequence[np.ndarray]]) -> np.ndarray:
        """(N, H, W, 3) uint8 frames -> (N,) float32 rewards (the formula in the class docstring)."""
        offset = (self.embedder.embed_frames(frames) - self.goal_embedding) @ self.projection
        return (1.0 - 0.5 * np.sum(offset**2, axis=-1)).astype(np.float32)

    def step(self, action):
        obs, gt_reward, terminated, truncated, info = self.env.step(action)
        info["gt_reward"] = gt_reward
        return obs, float(self.clip_reward([self.env.render()])[0]), terminated, truncated, info
