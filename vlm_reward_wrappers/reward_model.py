"""Reward models (an ensemble of :mod:`~vlm_reward_wrappers.reward_nets`, normalised) and their
Bradley-Terry training."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from vlm_reward_wrappers.config import LearnerConfig, check_reward_net
from vlm_reward_wrappers.preference_dataset import PreferenceDataset
from vlm_reward_wrappers.reward_nets import EnsembleCNN, EnsembleMLP, EnsembleResNet


class RewardModel:
    """An ensemble reward model on frames or observations, with reward normalisation and save/load.

    :param reward_input: "frame" (uint8 (H, W, 3) images, the default CNN) or "observation" (flat float
        state vectors, the MLP).
    :param input_shape: (H, W, 3) for frames (square), (D,) for observations.
    :param ensemble_size: members; the reward is their mean (3 in RL-VLM-F).
    :param reward_net: frames only: "cnn" (:class:`EnsembleCNN`) or "resnet18" (:class:`EnsembleResNet`,
        needs torchvision).
    :param normalize: standardise rewards to zero mean and unit variance over recent frames, refitted
        after every update, so reward scale does not drift between updates.
    :param device: torch device.
    :param seed: seed for the initial weights.
    """

    def __init__(
        self,
        reward_input: str,
        input_shape: Tuple[int, ...],
        ensemble_size: int = 3,
        reward_net: str = "cnn",
        normalize: bool = True,
        device: Union[str, torch.device] = "cpu",
        seed: Optional[int] = None,
        uncertainty_penalty: float = 0.0,
    ) -> None:
        if reward_input not in ("frame", "observation"):
            raise ValueError(f"reward_input must be 'frame' or 'observation', got {reward_input!r}")
        if ensemble_size < 1:
            raise ValueError(f"ensemble_size must be at least 1, got {ensemble_size}")
        check_reward_net(reward_net, reward_input)
        self.reward_input = reward_input
        self.input_shape = tuple(int(d) for d in input_shape)
        self.ensemble_size = ensemble_size
        self.reward_net = reward_net
        self.normalize = normalize
        self.uncertainty_penalty = float(uncertainty_penalty)
        self.device = torch.device(device)
        if seed is not None:
            torch.manual_seed(seed)
        if reward_input == "frame":
            if len(self.input_shape) != 3 or self.input_shape[0] != self.input_shape[1] or self.input_shape[2] != 3:
                raise ValueError(f"frame input_shape must be (S, S, 3), got {self.input_shape}")
            self.net: nn.Module = (EnsembleCNN(ensemble_size, self.input_shape[0]) if reward_net == "cnn"
                                   else EnsembleResNet(ensemble_size))
        else:
            if len(self.input_shape) != 1:
                raise ValueError(f"observation input_shape must be flat (D,), got {self.input_shape}")
            self.net = EnsembleMLP(ensemble_size, self.input_shape[0])
        self.net.to(self.device)
        self.mean, self.std = 0.0, 1.0
        # Each member's own normalisation, for the spread of the members (uncertainty_penalty): a member's
        # Bradley-Terry reward has an offset and scale of its own.
        self.member_mean, self.member_std = np.zeros(ensemble_size), np.ones(ensemble_size)
        #: Number of weight changes so far (:meth:`weights_changed`); relabelling watches it change.
        self.version = 0

    def to_tensor(self, inputs: np.ndarray) -> torch.Tensor:
        """Network input from inputs (B, ...) shared by all members or per member (B, E, ...).

        Frames become float (..., 3, H, W) in [-0.5, 0.5]; shared observations are expanded to
        (B, E, D), shared frames stay (B, 3, H, W) (the CNN shares its first layer's work).
        """
        x = torch.as_tensor(np.ascontiguousarray(inputs), device=self.device)
        per_member = x.ndim == len(self.input_shape) + 2
        if self.reward_input == "frame":
            return x.movedim(-1, -3).to(torch.float32, memory_format=torch.contiguous_format).div_(255.0).sub_(0.5)
        x = x.to(torch.float32)
        return x if per_member else x.unsqueeze(1).expand(-1, self.ensemble_size, -1)

    @torch.inference_mode()
    def member_rewards(self, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Raw (unnormalised) reward of every member: inputs (B, ...) -> (E, B) float32.

        :param batch_size: inputs per forward pass; 64 px frames in batches of 64 keep the activations in
            a CPU's cache and score twice as fast per frame as in batches of 1,024.
        """
        if self.net.training:  # set once: walking the modules on every env step costs a quarter millisecond
            self.net.train(False)
        out = np.empty((len(inputs), self.ensemble_size), dtype=np.float32)
        for i in range(0, len(inputs), batch_size):
            out[i : i + batch_size] = self.net(self.to_tensor(inputs[i : i + batch_size])).cpu().numpy()
        return out.T

    def predict(self, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Reward of each input: the normalised ensemble mean (less ``uncertainty_penalty`` times the
        members' spread), (B, ...) -> (B,) float32."""
        raw = self._combined(self.member_rewards(inputs, batch_size))
        return ((raw - self.mean) / self.std).astype(np.float32)

    def _combined(self, members: np.ndarray) -> np.ndarray:
        """(E, B) member rewards -> (B,): their mean, or with a penalty, the mean less the penalty times
        the spread of the members, each on its own normalisation."""
        if not self.uncertainty_penalty:
            return members.mean(axis=0)
        z = (members - self.member_mean[:, None]) / self.member_std[:, None]
        return z.mean(axis=0) - self.uncertainty_penalty * z.std(axis=0)

    def fit_normalization(self, inputs: np.ndarray) -> np.ndarray:
        """Set the normalisation so rewards of ``inputs`` have zero mean and unit variance (when
        ``normalize``); return those rewards, (B,) float32."""
        members = self.member_rewards(inputs)
        fit = self.normalize and len(inputs) >= 2
        if fit:  # each member's own first: the penalty combines members on their own scales
            self.member_mean, self.member_std = members.mean(axis=1), members.std(axis=1) + 1e-8
        raw = self._combined(members)
        if fit:
            self.mean, self.std = float(raw.mean()), float(raw.std() + 1e-8)
        return ((raw - self.mean) / self.std).astype(np.float32)

    def clone(self) -> "RewardModel":
        """An independent copy: same settings, weights, normalisation and version."""
        return RewardModel.from_state(self.state())

    def copy_weights_from(self, other: "RewardModel") -> None:
        """Take ``other``'s weights and normalisation (a model of the same settings): a new version."""
        self.net.load_state_dict(other.net.state_dict())
        self.mean, self.std = other.mean, other.std
        self.member_mean, self.member_std = other.member_mean.copy(), other.member_std.copy()
        self.weights_changed()

    def weights_changed(self) -> None:
        """Raise :attr:`version`: the one place it changes (trainers call it after changing the weights)."""
        self.version += 1

    def state(self) -> dict:
        """Settings, weights, normalisation and version, as :meth:`save` writes them."""
        return {
            "config": dict(reward_input=self.reward_input, input_shape=self.input_shape,
                           ensemble_size=self.ensemble_size, reward_net=self.reward_net, normalize=self.normalize,
                           uncertainty_penalty=self.uncertainty_penalty),
            "state_dict": {k: v.detach().clone() for k, v in self.net.state_dict().items()},
            "mean": self.mean,
            "std": self.std,
            "member_mean": self.member_mean.tolist(),
            "member_std": self.member_std.tolist(),
            "version": self.version,
        }

    @classmethod
    def from_state(cls, state: dict, device: Union[str, torch.device] = "cpu") -> "RewardModel":
        """The model a :meth:`state` describes."""
        model = cls(**state["config"], device=device)
        model.net.load_state_dict(state["state_dict"])
        model.mean, model.std, model.version = state["mean"], state["std"], state["version"]
        if "member_mean" in state:  # files written before the penalty existed have none
            model.member_mean, model.member_std = np.array(state["member_mean"]), np.array(state["member_std"])
        return model

    def save(self, path: Union[str, Path]) -> None:
        """Write weights, normalisation and settings to one file."""
        torch.save(self.state(), path)

    @classmethod
    def load(cls, path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> "RewardModel":
        """Load a model written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no reward model at {path}: write one with RewardModel.save(path)")
        return cls.from_state(torch.load(path, map_location=device, weights_only=True), device)


class UpdateAbandoned(Exception):
    """A reward-model update stopped before it finished (its owner is closing)."""


@dataclass
class TrainStats:
    """What one reward-model update did: mean loss and accuracy of its last epoch, epochs run."""

    loss: float
    accuracy: float
    epochs: int


def random_shift(frames: torch.Tensor, pad: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """DrQ's random-shift augmentation: each frame (..., C, H, W) is padded by ``pad`` pixels (edge pixels
    repeated) and cropped back to H x W at a random offset of its own, so it moves by up to ``pad`` pixels
    in each direction."""
    shape = frames.shape
    flat = frames.reshape(-1, *shape[-3:])
    n, c, h, w = flat.shape
    padded = F.pad(flat, (pad, pad, pad, pad), mode="replicate")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n, 1), generator=generator, device=frames.device)
    device = frames.device
    rows = (torch.arange(h, device=device) + dy)[:, None, :, None]  # (n, 1, H, 1)
    cols = (torch.arange(w, device=device) + dx)[:, None, None, :]  # (n, 1, 1, W)
    images = torch.arange(n, device=device)[:, None, None, None]
    channels = torch.arange(c, device=device)[None, :, None, None]
    return padded[images, channels, rows, cols].reshape(shape)


class BradleyTerryTrainer:
    """Trains a :class:`RewardModel` on preferences with the Bradley-Terry cross-entropy.

    P(second better) = sigmoid(r(b) - r(a)). Each ensemble member sees its own shuffle of the data,
    as in PEBBLE. Training stops early once train accuracy (ensemble average) reaches
    ``early_stop_accuracy``.

    :param model: the model to train in place.
    :param lr: Adam learning rate (3e-4, RL-VLM-F).
    :param batch_size: pairs per gradient step (64, RL-VLM-F).
    :param epochs: passes over all labels per update (RL-VLM-F: 10 for MetaWorld, 50 for CartPole).
    :param gradient_steps: if set, an update ends after this many minibatch steps (from the current
        weights), however many labels there are: its cost stays bounded as labels accumulate.
    :param early_stop_accuracy: stop an update once this train accuracy is reached (0.97).
    :param augment_shift: frame models only: shift each training frame by up to this many pixels
        (:func:`random_shift`, as DrQ and SURF augment); 0 (RL-VLM-F) trains on the frames as they are.
    """

    def __init__(
        self,
        model: RewardModel,
        lr: float = 3e-4,
        batch_size: int = 64,
        epochs: int = 10,
        gradient_steps: Optional[int] = None,
        early_stop_accuracy: float = 0.97,
        augment_shift: int = 0,
        seed: Optional[int] = None,
    ) -> None:
        if augment_shift and model.reward_input != "frame":
            raise ValueError("augment_shift shifts frames: a reward model on observations has none")
        self.model = model
        self.augment_shift = augment_shift
        self.batch_size = batch_size
        self.epochs = epochs
        self.gradient_steps = gradient_steps
        self.early_stop_accuracy = early_stop_accuracy
        self.optimizer = torch.optim.Adam(model.net.parameters(), lr=lr)
        self.rng = np.random.default_rng(seed)
        self._generator = torch.Generator(device=model.device)
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed)

    def train(
        self, dataset: PreferenceDataset, epochs: Optional[int] = None, stop: Optional[threading.Event] = None,
    ) -> TrainStats:
        """Run one update over all of ``dataset`` and bump the model's version.

        :param stop: checked before each gradient step; once set, the update is abandoned
            (:class:`UpdateAbandoned` is raised, the weights are left part-trained).
        """
        if len(dataset) == 0:
            raise ValueError("no labelled pairs to train on")
        inputs_a, inputs_b, targets = dataset.arrays()
        n, e = len(targets), self.model.ensemble_size
        net = self.model.net
        net.train()
        steps_left = self.gradient_steps or float("inf")
        if self.gradient_steps is not None:
            epochs = -(-self.gradient_steps * self.batch_size // n)  # enough passes for the steps
        loss_sum = correct = 0.0
        epochs_run = seen = 0
        for _ in range(epochs or self.epochs):
            epochs_run += 1
            order = np.stack([self.rng.permutation(n) for _ in range(e)], axis=1)  # (n, E)
            loss_sum = correct = seen = 0.0
            for start in range(0, n, self.batch_size):
                if steps_left <= 0:
                    break
                if stop is not None and stop.is_set():
                    raise UpdateAbandoned("the update was stopped")
                steps_left -= 1
                idx = order[start : start + self.batch_size]  # (b, E): member e reads column e
                both = self.model.to_tensor(np.concatenate([inputs_a[idx], inputs_b[idx]]))
                if self.augment_shift:
                    both = random_shift(both, self.augment_shift, self._generator)
                rewards = net(both)  # (2b, E)
                logits = rewards[len(idx) :] - rewards[: len(idx)]
                target = torch.as_tensor(targets[idx], device=self.model.device)
                loss = F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
                self.optimizer.zero_grad()
                (loss / (len(idx) * e)).backward()
                self.optimizer.step()
                loss_sum += loss.item()
                correct += ((logits > 0).float() == (target > 0.5).float()).sum().item()
                seen += len(idx) * e
            if correct / seen >= self.early_stop_accuracy or steps_left <= 0:
                break
        self.model.weights_changed()
        return TrainStats(loss=loss_sum / seen, accuracy=correct / seen, epochs=epochs_run)


def model_for_config(config: LearnerConfig, model: Optional[RewardModel] = None, seed: Optional[int] = None
                     ) -> RewardModel:
    """``model``, or a new frame model from ``config``; a ValueError where the two disagree."""
    if model is None:
        if config.reward_input != "frame":
            raise ValueError("a learner on observations needs its model: pass reward_model=RewardModel('observation', (D,))")
        size = config.reward_image_size
        return RewardModel("frame", (size, size, 3), ensemble_size=config.ensemble_size, reward_net=config.reward_net,
                           seed=seed, uncertainty_penalty=config.uncertainty_penalty)
    if not isinstance(model, RewardModel):
        raise TypeError(f"reward_model must be a RewardModel (e.g. RewardModel.load(path)), got {type(model).__name__}")
    mismatch = model.reward_input != config.reward_input or model.ensemble_size != config.ensemble_size or (
        model.reward_input == "frame" and (model.input_shape[0] != config.reward_image_size
                                           or model.reward_net != config.reward_net)
    ) or model.uncertainty_penalty != config.uncertainty_penalty
    if mismatch:
        raise ValueError(
            f"the reward_model given reads {model.reward_input} inputs of shape {model.input_shape} with "
            f"{model.ensemble_size} members ({model.reward_net}, uncertainty_penalty {model.uncertainty_penalty}), "
            f"but the settings ask for {config.reward_input} inputs, reward_image_size {config.reward_image_size}, "
            f"ensemble_size {config.ensemble_size}, reward_net {config.reward_net!r} and uncertainty_penalty "
            f"{config.uncertainty_penalty}: pass the model's own settings"
        )
    return model
