"""Command line: ``vlm-reward train`` trains an SB3 agent on the learned reward and prints its figures;
``vlm-reward audit`` measures a labeler on an env's frames before a budget is spent; ``vlm-reward label``
relabels a fixed dataset's rewards with a VLM (offline); ``vlm-reward inspect`` serves a label store's
browser. The benchmark harness,
which compares reward sources against the true reward, is ``python benchmarks/run.py``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from typing import Dict, List, Optional

import gymnasium as gym

from vlm_reward_wrappers.config import NORMALIZE_ON, PRESETS, REWARD_NETS

ALGOS = ("PPO", "A2C", "SAC", "TD3", "DQN")
#: sb3-contrib's algorithms (the ``contrib`` extra) and the policy each takes.
CONTRIB_ALGOS = {"TQC": "MlpPolicy", "CrossQ": "MlpPolicy", "TRPO": "MlpPolicy", "RecurrentPPO": "MlpLstmPolicy"}
#: LearnerConfig settings that ``vlm-reward train`` takes as flags (each overrides the preset's).
CONFIG_FLAGS = ("reward_input", "reward_image_size", "reward_net", "seed_steps", "exploration_steps", "query_every",
                "pairs_per_query", "feedback_budget", "epochs_per_update", "gradient_steps_per_update", "augment_shift",
                "normalize_on")


def make_backend(args: argparse.Namespace):
    """The chat backend of ``--labeler llama`` or ``--labeler openai``, built from its options."""
    from vlm_reward_wrappers.labelers import backends

    if args.labeler == "llama":
        if not (args.model_path and args.mmproj_path):
            raise SystemExit("--labeler llama needs --model-path and --mmproj-path (GGUF files, see the labelers page of the docs)")
        return backends.LlamaCppBackend(
            args.model_path, args.mmproj_path, chat_handler=args.chat_handler, n_ctx=args.n_ctx,
            n_threads=args.vlm_threads, n_threads_batch=args.vlm_threads, n_gpu_layers=args.n_gpu_layers,
            query_image_size=args.query_image_size,
        )
    if args.labeler == "openai":
        return backends.OpenAICompatibleBackend(
            args.base_url, args.model, api_key_env=args.api_key_env, timeout_s=args.timeout_s,
            max_concurrency=args.max_concurrency, query_image_size=args.query_image_size,
        )
    raise ValueError(f"--labeler {args.labeler} has no chat backend")


def make_labeler(args: argparse.Namespace):
    """The preference labeler named by ``--labeler``, built from its options."""
    from vlm_reward_wrappers import labelers

    if args.labeler == "oracle":
        return labelers.OracleLabeler(mistake_rate=args.mistake_rate, seed=args.seed)
    if args.labeler == "simulated-vlm":
        return labelers.SimulatedVLMLabeler(args.target_accuracy, args.position_bias, args.abstain_rate, seed=args.seed)
    if args.labeler in ("llama", "openai"):
        return labelers.ChatPreferenceLabeler(make_backend(args), two_stage=not args.single_stage)
    if args.labeler == "human":
        from vlm_reward_wrappers.labelers.human import HumanLabeler

        labeler = HumanLabeler(args.human_host, args.human_port, args.human_token)
        print(f"label pairs in a browser at {labeler.url}", file=sys.stderr, flush=True)
        return labeler
    if args.labeler == "clip":
        return labelers.CLIPLabeler(
            args.clip_model, margin=args.clip_margin, checkpoint_path=args.clip_checkpoint,
            pretrained=args.clip_pretrained,
        )
    raise ValueError(f"unknown labeler {args.labeler!r}")


def algorithm(name: str) -> type:
    """SB3's or sb3-contrib's algorithm class of that name; an ImportError naming the extra if contrib is missing."""
    if name not in CONTRIB_ALGOS:
        import stable_baselines3

        return getattr(stable_baselines3, name)
    try:
        import sb3_contrib
    except ImportError as error:
        raise ImportError(f"{name} is sb3-contrib's: pip install 'vlm-reward-wrappers[contrib]'") from error
    return getattr(sb3_contrib, name)


def train(args: argparse.Namespace) -> Dict[str, float]:
    """Train ``args.algo`` on ``args.env`` with the learned reward; return the figures printed."""
    import torch
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
    from stable_baselines3.common.monitor import Monitor

    from vlm_reward_wrappers import LabelStore, RelabelingReplayBuffer, VLMMetricsCallback, VLMRewardWrapper
    from vlm_reward_wrappers.config import make_config
    from vlm_reward_wrappers.evaluation import random_score
    from vlm_reward_wrappers.envs import goal_for

    # Small networks on a few cores run several times faster on one thread (docs/performance.md).
    torch.set_num_threads(args.threads)
    goal = args.goal or goal_for(args.env)
    labeler = make_labeler(args)
    overrides = {name: getattr(args, name) for name in CONFIG_FLAGS if getattr(args, name) is not None}
    if overrides.get("gradient_steps_per_update") == 0:
        overrides["gradient_steps_per_update"] = None  # the preset's bound off: epochs_per_update over all labels
    config = make_config(args.preset, **overrides)
    env = VLMRewardWrapper(
        gym.make(args.env, render_mode="rgb_array"), goal=goal, labeler=labeler, config=config, seed=args.seed,
        label_store=LabelStore(args.label_store) if args.label_store else None,
    )
    algo_cls = algorithm(args.algo)
    off_policy = issubclass(algo_cls, OffPolicyAlgorithm)
    # Off-policy updates wait for the first labels: before them the reward model is untrained noise.
    algo_kwargs = dict(learning_starts=config.seed_steps, replay_buffer_class=RelabelingReplayBuffer,
                       replay_buffer_kwargs=dict(wrapper=env)) if off_policy else {}
    model = algo_cls(CONTRIB_ALGOS.get(args.algo, "MlpPolicy"), env, seed=args.seed, verbose=0,
                     tensorboard_log=args.tensorboard_log, **algo_kwargs)
    started = time.perf_counter()
    try:
        model.learn(args.steps, callback=VLMMetricsCallback(env), progress_bar=sys.stderr.isatty())
    except KeyboardInterrupt:  # answers in flight get a few seconds to land in the store, then all closes
        env.close()
        raise
    env.learner.flush(timeout=60)
    wall_s = time.perf_counter() - started
    eval_env = Monitor(gym.make(args.env))
    mean_return, std_return = evaluate_policy(model, eval_env, n_eval_episodes=args.eval_episodes)
    metrics = env.learner.metrics
    if args.save_reward_model:
        env.learner.reward_model.save(args.save_reward_model)
    env.close()
    return {
        "true_return": float(mean_return),
        "true_return_std": float(std_return),
        "random_return": random_score(args.env, args.eval_episodes, seed=args.seed),
        "labels_used": metrics["labels_used"],
        "queries_sent": metrics["queries_sent"],
        "label_accuracy": metrics["label_accuracy"],
        "reward_gt_correlation": metrics["reward_model/gt_correlation"],
        "reward_model_updates": metrics["reward_model/updates"],
        "wall_s": wall_s,
    }


def labeler_options() -> argparse.ArgumentParser:
    """The options of :func:`make_labeler`, shared by the commands that label."""
    labeler = argparse.ArgumentParser(add_help=False)
    labeler.add_argument("--labeler", default="oracle", choices=("oracle", "simulated-vlm", "llama", "openai", "clip", "human"),
                         help="who answers the queries: the simulated teacher, a simulated VLM (errs like one), "
                              "a local GGUF VLM, a chat server, CLIP, people in a browser")
    labeler.add_argument("--mistake-rate", type=float, default=0.0, help="oracle: simulated teacher's error rate")
    labeler.add_argument("--target-accuracy", type=float, default=0.75, help="simulated-vlm: its label accuracy")
    labeler.add_argument("--position-bias", type=float, default=0.6, help="simulated-vlm: P(image 1) when guessing")
    labeler.add_argument("--abstain-rate", type=float, default=0.1, help="simulated-vlm: P(-1) when unsure")
    labeler.add_argument("--model-path", default=None, help="llama: the VLM's GGUF file")
    labeler.add_argument("--mmproj-path", default=None, help="llama: the VLM's vision projector GGUF file")
    labeler.add_argument("--chat-handler", default="auto", help="llama: 'auto' or a llama-cpp-python chat format name")
    labeler.add_argument("--n-ctx", type=int, default=4096, help="llama: context length in tokens")
    labeler.add_argument("--n-gpu-layers", type=int, default=0, help="llama: layers on the GPU (-1: all)")
    labeler.add_argument("--vlm-threads", type=int, default=None, help="llama: CPU threads (default: llama.cpp's)")
    labeler.add_argument("--base-url", nargs="+", default=["http://127.0.0.1:8000/v1"],
                         help="openai: the server's API root, or several servers' (queries go round them, "
                              "skipping one that is down)")
    labeler.add_argument("--model", default="default", help="openai: the model name the server knows")
    labeler.add_argument("--api-key-env", default="OPENAI_API_KEY", help="openai: environment variable holding the key")
    labeler.add_argument("--timeout-s", type=float, default=300.0, help="openai: seconds to wait for one response")
    labeler.add_argument("--max-concurrency", type=int, default=4, help="openai: requests in flight at once")
    labeler.add_argument("--query-image-size", type=int, default=None,
                         help="llama, openai: longer side in pixels of the frames sent to the VLM")
    labeler.add_argument("--single-stage", action="store_true", help="llama, openai: ask for the answer in one query")
    labeler.add_argument("--clip-model", default="ViT-B-32", help="clip: open_clip architecture")
    labeler.add_argument("--clip-checkpoint", default=None, help="clip: local weights file")
    labeler.add_argument("--clip-pretrained", default=None, help="clip: open_clip weight tag (downloads)")
    labeler.add_argument("--clip-margin", type=float, default=0.0, help="clip: similarity differences answered -1")
    labeler.add_argument("--human-host", default="127.0.0.1",
                         help="human: address of the labelling page (anything but loopback needs the access token)")
    labeler.add_argument("--human-port", type=int, default=8765, help="human: port of the labelling page")
    labeler.add_argument("--human-token", default=None, help="human: access token (default: random off loopback)")
    return labeler


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``vlm-reward``: the ``train``, ``audit``, ``label`` and ``inspect`` commands."""
    parser = argparse.ArgumentParser(prog="vlm-reward", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    labeler = labeler_options()
    p = sub.add_parser("train", parents=[labeler],
                       help="train an SB3 agent on the learned reward and print true return and label figures")
    p.add_argument("--env", default="vlmrw/CartPoleAngle-v0", help="Gymnasium id (rendered as rgb_array)")
    p.add_argument("--goal", default=None, help="the task in words (default: the registered goal of --env)")
    p.add_argument("--algo", default="PPO", choices=[*ALGOS, *CONTRIB_ALGOS],
                   help="SB3's algorithm, or sb3-contrib's (the contrib extra)")
    p.add_argument("--steps", type=int, default=20_000, help="env steps to train")
    p.add_argument("--preset", default="quick", choices=sorted(PRESETS),
                   help="learner settings: RL-VLM-F's per task family, or quick (minutes on a CPU)")
    p.add_argument("--reward-input", default=None, choices=("frame", "observation"))
    p.add_argument("--reward-image-size", type=int, default=None, help="side in pixels of the reward model's frames")
    p.add_argument("--reward-net", default=None, choices=REWARD_NETS,
                   help="frame reward net: RL-VLM-F's small CNN or its ResNet-18 (cloth, rope; slow without a GPU)")
    for flag in ("seed-steps", "exploration-steps", "query-every", "pairs-per-query", "feedback-budget", "epochs-per-update",
                 "augment-shift"):
        p.add_argument(f"--{flag}", type=int, default=None, help="overrides the preset's")
    p.add_argument("--gradient-steps-per-update", type=int, default=None,
                   help="minibatch steps per reward-model update; 0: RL-VLM-F's epochs over all labels instead")
    p.add_argument("--normalize-on", default=None, choices=NORMALIZE_ON,
                   help="standardise the learned reward over the policy's recent frames or all frames held")
    p.add_argument("--label-store", default=None, help="sqlite file keeping every label (resumable)")
    p.add_argument("--save-reward-model", default=None, help="write the trained reward model here")
    p.add_argument("--tensorboard-log", default=None, help="TensorBoard folder for SB3's logger")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the figures as one JSON line")

    a = sub.add_parser("audit", parents=[labeler],
                       help="before spending a budget: ask the labeler about pairs of an env's frames and report its "
                            "accuracy, abstentions, position bias, latency and the budget's time and cost (JSON + HTML)")
    a.add_argument("--env", default="vlmrw/CartPoleAngle-v0", help="Gymnasium id (rendered as rgb_array)")
    a.add_argument("--goal", default=None, help="the task in words (default: the registered goal of --env)")
    a.add_argument("--pairs", type=int, default=50, help="pairs to ask")
    a.add_argument("--feedback-budget", type=int, default=10_000, help="queries a training run would send")
    a.add_argument("--cost-per-query", type=float, default=0.0, help="money per query, for the cost estimate")
    a.add_argument("--swap", action="store_true", help="ask each pair both ways round (position bias, consistency)")
    a.add_argument("--label-store", default=None, help="sqlite file keeping every answer (resumable)")
    a.add_argument("--out", default="audit", help="folder for audit.json and audit.html")
    a.add_argument("--seed", type=int, default=0)

    o = sub.add_parser("label", parents=[labeler],
                       help="relabel a Minari dataset's rewards with VLM scores (RG-VLM) or a reward model "
                            "trained on VLM preferences (RL-VLM-F), written as a new Minari dataset")
    o.add_argument("--dataset", required=True, help="local Minari dataset id, or a dataset's folder")
    o.add_argument("--out", required=True, help="id of the new Minari dataset (under MINARI_DATASETS_PATH)")
    o.add_argument("--method", default="score", choices=("score", "preference"),
                   help="score: 0-10 per transition from windows of frames; preference: reward model on pairs")
    o.add_argument("--goal", default=None, help="the task in words (default: the registered goal of the dataset's env)")
    o.add_argument("--weight", type=float, default=1.0, help="reward = weight x VLM reward")
    o.add_argument("--add-dataset-reward", action="store_true",
                   help="reward = dataset reward (e.g. sparse success) + weight x VLM reward")
    o.add_argument("--frame-key", default=None, help="'observations', 'observations/<key>' or 'infos/<key>' "
                   "(default: image observations, else a frame in the infos)")
    o.add_argument("--true-reward-key", default="gt_reward",
                   help="info key of the true reward, for oracle teachers and figures (default: the dataset's rewards)")
    o.add_argument("--label-store", default="vlm-labels.sqlite", help="sqlite file keeping every answer (resume)")
    o.add_argument("--window", type=int, default=4, help="score: transitions per query")
    o.add_argument("--action-description", default=None, help="score: what an action means, in words")
    o.add_argument("--score-noise", type=float, default=0.0, help="score, oracle: noise std in score points")
    o.add_argument("--fill", type=float, default=None,
                   help="score: value of unreadable scores (default: mean of the scored transitions)")
    o.add_argument("--queries", type=int, default=2000, help="preference: pairs to label (feedback budget)")
    o.add_argument("--epochs", type=int, default=50, help="preference: reward-model epochs")
    o.add_argument("--reward-image-size", type=int, default=64,
                   help="preference: side in pixels of the reward model's frames (and of the frames shown)")
    o.add_argument("--save-reward-model", default=None, help="preference: write the trained reward model here")
    o.add_argument("--threads", type=int, default=1, help="torch threads")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--json", action="store_true", help="print the figures as one JSON line")

    i = sub.add_parser("inspect", help="browse a label store: every pair as the labeler saw it, its answer and the "
                                       "true one, filters, label accuracy over time")
    i.add_argument("store", help="the label store's sqlite file")
    i.add_argument("--host", default="127.0.0.1", help="address to serve on (anything but loopback needs the token)")
    i.add_argument("--port", type=int, default=8766)
    i.add_argument("--token", default=None, help="access token (default: random off loopback)")
    return parser


def label(args: argparse.Namespace) -> Dict[str, float]:
    """Relabel ``args.dataset`` with ``args.method`` and write it as ``args.out``; return the figures."""
    import torch

    from vlm_reward_wrappers.envs import goal_for
    from vlm_reward_wrappers.labelers import ChatScoreLabeler, OracleScoreLabeler
    from vlm_reward_wrappers.label_store import LabelStore
    from vlm_reward_wrappers.offline import (
        OfflineDataset, PreferenceRelabeler, WindowScorer, fill_unscored, mix_rewards, true_reward_correlation,
    )

    torch.set_num_threads(args.threads)
    dataset = OfflineDataset.from_minari(args.dataset, frame_key=args.frame_key, gt_reward_key=args.true_reward_key)
    if args.goal is None and dataset.env_spec is None:
        raise SystemExit("the dataset names no env to take a goal from: pass --goal")
    goal = args.goal or goal_for(dataset.env_spec.id)
    store = LabelStore(args.label_store)
    started = time.perf_counter()
    if args.method == "score":
        if args.labeler == "clip":
            raise SystemExit("CLIP compares frames but cannot score transitions: use --method preference")
        scorer = WindowScorer(
            OracleScoreLabeler(dataset.gt_reward_range, noise_std=args.score_noise, seed=args.seed)
            if args.labeler == "oracle"
            else ChatScoreLabeler(make_backend(args), args.action_description, two_stage=not args.single_stage),
            goal, store, window_size=args.window,
        )
        vlm_rewards = fill_unscored(scorer.score(dataset), args.fill)
        figures = scorer.metrics
        scorer.close()
    else:
        relabeler = PreferenceRelabeler(make_labeler(args), goal, store, n_queries=args.queries,
                                        reward_image_size=args.reward_image_size, epochs=args.epochs, seed=args.seed)
        vlm_rewards = relabeler.relabel(dataset)
        figures = relabeler.metrics
        relabeler.close()
        if args.save_reward_model:
            relabeler.reward_model.save(args.save_reward_model)
    store.close()
    rewards = mix_rewards(dataset, vlm_rewards, args.weight, args.add_dataset_reward)
    how = f"{args.method} from {args.labeler}, weight {args.weight}" + (" + dataset reward" if args.add_dataset_reward else "")
    dataset.to_minari(args.out, rewards, description=f"Rewards relabelled by vlm-reward label ({how}); goal: {goal}")
    return {**figures, "episodes": len(dataset.episodes), "steps": dataset.total_steps,
            "vlm_reward_true_correlation": true_reward_correlation(dataset, vlm_rewards),
            "wall_s": time.perf_counter() - started}


def audit(args: argparse.Namespace) -> Dict[str, float]:
    """Audit ``args.labeler`` on ``args.env``, write the report to ``args.out``; return its figures."""
    from vlm_reward_wrappers import audit as audits
    from vlm_reward_wrappers.envs import goal_for
    from vlm_reward_wrappers.label_store import LabelStore

    env = gym.make(args.env, render_mode="rgb_array")
    result = audits.audit(env, args.goal or goal_for(args.env), make_labeler(args), n_pairs=args.pairs,
                          feedback_budget=args.feedback_budget, cost_per_query=args.cost_per_query, swap=args.swap,
                          label_store=LabelStore(args.label_store) if args.label_store else None, seed=args.seed)
    env.close()
    page = audits.write_report(result, args.out)
    figures = {k: v for k, v in vars(result).items() if k not in ("items", "gap_bins", "labeler_id", "goal")}
    return {**figures, "report": str(page)}


def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(args)
    except (ImportError, FileNotFoundError, KeyError, ValueError, gym.error.Error) as error:
        # A user's mistake (a missing extra or file, a setting out of range, an unknown env or goal): one line.
        raise SystemExit(f"vlm-reward: {error.args[0] if isinstance(error, KeyError) else error}") from None


def run(args: argparse.Namespace) -> None:
    """Run the command ``args`` name and print its figures."""
    if args.command == "inspect":
        from vlm_reward_wrappers.web.inspect import serve_inspect

        server = serve_inspect(args.store, args.host, args.port, args.token)
        print(f"browsing {args.store} at {server.url} (Ctrl-C stops)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            server.close()
        return
    if args.command == "audit":
        figures = audit(args)
        for name, value in figures.items():
            print(f"  {name + ':':<26}{value:.3f}" if isinstance(value, float) else f"  {name + ':':<26}{value}")
        return
    if args.command == "label":
        figures = label(args)
        if args.json:
            print(json.dumps(figures))
            return
        print(f"{args.dataset} -> {args.out}: {figures['steps']} transitions in {figures['episodes']} episodes, "
              f"{args.method} rewards from the {args.labeler} labeler")
        for name, value in figures.items():
            if name not in ("steps", "episodes"):
                print(f"  {name + ':':<30}{value:.3f}" if isinstance(value, float) else f"  {name + ':':<30}{value}")
        print(f"  {'label store:':<30}{args.label_store}")
        return
    # A scheduler's SIGTERM stops a run as Ctrl-C does: calls in flight get seconds to answer, then all closes.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        figures = train(args)
    except KeyboardInterrupt:
        where = args.label_store or "no file (pass --label-store FILE to keep labels across runs)"
        print(f"vlm-reward: stopped before the end of training; the labels answered so far are in {where}",
              file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        print(json.dumps(figures))
        return
    teacher = "the simulated teacher" if args.labeler == "oracle" else f"the {args.labeler} labeler"
    print(f"{args.algo} on {args.env}, {args.steps} steps, reward learned from {teacher}'s preferences:")
    print(f"  true return (trained policy): {figures['true_return']:.1f} +- {figures['true_return_std']:.1f}")
    print(f"  true return (random actions): {figures['random_return']:.1f}")
    print(f"  labels used:                  {figures['labels_used']} ({figures['queries_sent']} queries sent)")
    print(f"  label accuracy:               {figures['label_accuracy']:.3f}")
    print(f"  reward/true-reward corr.:     {figures['reward_gt_correlation']:.3f}")
    print(f"  wall time:                    {figures['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
