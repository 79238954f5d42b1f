import json

import pytest

from vlm_reward_wrappers import RewardModel
from vlm_reward_wrappers.cli import main


@pytest.mark.slow
def test_train_prints_true_return_labels_and_accuracy(capsys, tmp_path):
    main(["train", "--algo", "PPO", "--steps", "512", "--seed-steps", "100", "--query-every", "200",
          "--pairs-per-query", "10", "--epochs-per-update", "2", "--eval-episodes", "2",
          "--label-store", str(tmp_path / "labels.sqlite"), "--save-reward-model", str(tmp_path / "reward.pt"), "--json"])
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["labels_used"] > 0 and figures["label_accuracy"] == 1.0
    assert figures["true_return"] <= 0 and figures["random_return"] < 0  # -|angle| summed
    assert (tmp_path / "reward.pt").is_file() and (tmp_path / "labels.sqlite").is_file()


def test_train_prints_a_readable_summary(capsys):
    main(["train", "--algo", "A2C", "--steps", "200", "--seed-steps", "50", "--query-every", "100",
          "--pairs-per-query", "5", "--epochs-per-update", "1", "--eval-episodes", "1"])
    out = capsys.readouterr().out
    assert "true return (trained policy)" in out and "labels used" in out and "label accuracy" in out


def test_train_takes_the_exploration_and_augmentation_settings(capsys):
    # 50 seed steps and 100 of exploration: the only batch goes out at step 150, not at 50 and 150.
    main(["train", "--algo", "A2C", "--steps", "200", "--seed-steps", "50", "--exploration-steps", "100",
          "--query-every", "100", "--pairs-per-query", "5", "--epochs-per-update", "1", "--augment-shift", "2",
          "--eval-episodes", "1", "--json"])
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["queries_sent"] == 5 and figures["reward_model_updates"] == 1


@pytest.mark.parametrize("flag, expected, normalize_on", [
    ([], 50, "buffer"), (["--gradient-steps-per-update", "0"], None, "buffer"),
    (["--gradient-steps-per-update", "7", "--normalize-on", "recent"], 7, "recent")])
def test_train_bounds_and_standardises_as_the_quick_preset_does_unless_told(flag, expected, normalize_on, capsys,
                                                                            monkeypatch):
    from vlm_reward_wrappers import config as config_module

    built = []
    make_config = config_module.make_config
    monkeypatch.setattr(config_module, "make_config", lambda *a, **k: built.append(make_config(*a, **k)) or built[-1])
    main(["train", "--algo", "A2C", "--steps", "60", "--seed-steps", "50", "--query-every", "100",
          "--pairs-per-query", "5", "--epochs-per-update", "1", "--eval-episodes", "1", *flag])
    assert built[0].gradient_steps_per_update == expected and built[0].epochs_per_update == 1
    assert built[0].normalize_on == normalize_on


@pytest.mark.slow
def test_train_builds_the_reward_net_asked_for(tmp_path, capsys):
    path = tmp_path / "reward.pt"
    main(["train", "--algo", "A2C", "--steps", "100", "--seed-steps", "50", "--query-every", "100",
          "--pairs-per-query", "5", "--epochs-per-update", "1", "--reward-net", "resnet18", "--eval-episodes", "1",
          "--save-reward-model", str(path)])
    model = RewardModel.load(path)
    assert model.reward_net == "resnet18" and model.version == 1


def test_train_runs_sb3_contribs_algorithms(capsys):
    pytest.importorskip("sb3_contrib", reason="needs sb3-contrib: pip install -e '.[contrib]'")
    main(["train", "--algo", "TQC", "--steps", "200", "--seed-steps", "50", "--query-every", "100",
          "--pairs-per-query", "5", "--epochs-per-update", "1", "--eval-episodes", "1", "--json"])
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["labels_used"] == 10 and figures["reward_model_updates"] >= 1


@pytest.mark.parametrize("argv, message", [
    (["--algo", "TQC"], r"vlm-reward: TQC is sb3-contrib's: pip install 'vlm-reward-wrappers\[contrib\]'"),
    (["--env", "NoSuchEnv-v0"], r"vlm-reward: .*NoSuchEnv"),
    (["--query-every", "0"], r"vlm-reward: .*query_every"),
])
def test_a_users_mistake_is_one_line_not_a_traceback(argv, message, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "sb3_contrib", None)
    with pytest.raises(SystemExit, match=message) as stopped:
        main(["train", "--steps", "100", *argv])
    assert "\n" not in str(stopped.value.code)
