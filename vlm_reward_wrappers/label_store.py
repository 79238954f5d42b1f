"""The durable label store (sqlite3) of preferences and window scores, its records, preference values and
frame hashing. Knows no labeler."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

#: Preference values: the first frame is closer to the goal, the second is, or no preference (stored,
#: never trained on).
FIRST, SECOND, NO_PREFERENCE = 0, 1, -1


def check_frame(frame: Any, what: str = "frame") -> np.ndarray:
    """An (H, W, 3) uint8 rgb frame, or a ValueError saying what a frame must be.

    Integer frames within 0-255 are converted; float frames are refused (0-1 and 0-255 scales cannot be
    told apart), and so are values outside 0-255.
    """
    array = np.asarray(frame)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"{what} must be an (H, W, 3) rgb image, got an array of shape {array.shape}")
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind not in "iu":
        raise ValueError(
            f"{what} has dtype {array.dtype}; frames must be uint8 rgb in 0-255, as render_mode='rgb_array' "
            "returns them: convert float images first, e.g. (image * 255).round().astype(np.uint8) for a 0-1 scale"
        )
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > 255:
        raise ValueError(f"{what} has values from {low} to {high}; frames must be uint8 rgb in 0-255")
    return array.astype(np.uint8)


def frame_hash(frame: np.ndarray) -> str:
    """Content hash of a frame (or observation): same pixels and shape, same hash."""
    array = np.ascontiguousarray(frame)
    digest = hashlib.blake2b(array.tobytes(), digest_size=16)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    return digest.hexdigest()


def encode_array(array: np.ndarray) -> bytes:
    """An array as the label store keeps it: dtype, shape and zlib-compressed bytes."""
    array = np.ascontiguousarray(array)
    header = f"{array.dtype.str};{','.join(map(str, array.shape))};".encode()
    return header + zlib.compress(array.tobytes(), 6)


def decode_array(blob: bytes) -> np.ndarray:
    """The array :func:`encode_array` wrote."""
    dtype, shape, data = blob.split(b";", 2)
    dims = tuple(int(d) for d in shape.decode().split(",") if d)
    return np.frombuffer(zlib.decompress(data), dtype=np.dtype(dtype.decode())).reshape(dims)


@dataclass
class LabelRecord:
    """One answered query as kept in the :class:`LabelStore`.

    ``gt_reward_a`` and ``gt_reward_b`` are the true rewards of the two frames where the env gave them
    (None otherwise): never shown to the labeler, kept so the answer can be checked later (``vlm-reward
    inspect``).
    """

    hash_a: str
    hash_b: str
    goal: str
    labeler_id: str
    prompt_version: str
    preference: int
    soft: Optional[float] = None
    raw: str = ""
    latency_s: float = 0.0
    created: float = field(default_factory=time.time)
    gt_reward_a: Optional[float] = None
    gt_reward_b: Optional[float] = None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    hash TEXT PRIMARY KEY,
    frame BLOB NOT NULL,
    reward_input BLOB
);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hash_a TEXT NOT NULL,
    hash_b TEXT NOT NULL,
    goal TEXT NOT NULL,
    labeler_id TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    preference INTEGER NOT NULL,
    soft REAL,
    raw TEXT NOT NULL,
    latency_s REAL NOT NULL,
    created REAL NOT NULL,
    gt_reward_a REAL,
    gt_reward_b REAL,
    UNIQUE (hash_a, hash_b, goal, labeler_id, prompt_version)
);
CREATE TABLE IF NOT EXISTS window_scores (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    window_hash TEXT NOT NULL,
    frame_hashes TEXT NOT NULL,
    actions TEXT NOT NULL,
    goal TEXT NOT NULL,
    labeler_id TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    scores TEXT NOT NULL,
    raw TEXT NOT NULL,
    latency_s REAL NOT NULL,
    created REAL NOT NULL,
    UNIQUE (window_hash, goal, labeler_id, prompt_version)
);
"""


def _finite_or_none(value: Optional[float]) -> Optional[float]:
    return None if value is None or not np.isfinite(value) else float(value)


def window_hash(frame_hashes: Sequence[str], actions: str) -> str:
    """Content hash of a window query: its frames (by :func:`frame_hash`) and its actions as shown."""
    return hashlib.blake2b(json.dumps([list(frame_hashes), actions]).encode(), digest_size=16).hexdigest()


@dataclass
class ScoreRecord:
    """One answered window query (RG-VLM) as kept in the :class:`LabelStore`.

    :param window_hash: :func:`window_hash` of the query.
    :param frame_hashes: the W + 1 frames shown, in order.
    :param actions: the W actions as shown to the labeler.
    :param scores: one 0-10 score per action, NaN where the answer stated none.
    """

    window_hash: str
    frame_hashes: Tuple[str, ...]
    actions: str
    goal: str
    labeler_id: str
    prompt_version: str
    scores: Tuple[float, ...]
    raw: str = ""
    latency_s: float = 0.0
    created: float = field(default_factory=time.time)


class LabelStore:
    """Every answered query, committed to SQLite before the learner uses it.

    Preferences between two frames (RL-VLM-F) go to one table, 0-10 scores of the transitions of a
    window of frames (RG-VLM, :mod:`vlm_reward_wrappers.offline`) to another.

    Frames are kept zlib-compressed beside the answers, so a reward model can be retrained from the
    store alone and a restarted run resumes with all its labels. Safe to share between the learner
    and its labelling thread.

    :param path: database file; ":memory:" (the default) keeps labels for this process only.
    """

    def __init__(self, path: Union[str, Path] = ":memory:") -> None:
        self.path = str(path)
        if self.path != ":memory:":
            folder = Path(self.path).resolve().parent
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"cannot create the label store {self.path}: the folder {folder} does not exist; create it "
                    f"first (os.makedirs({str(folder)!r})) or choose another path"
                )
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            if self.path != ":memory:":
                # WAL keeps committed rows through a SIGKILL without an fsync per reader.
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            self._check_schema()
            self._add_missing_columns()
        except sqlite3.DatabaseError as error:
            self._db.close()
            raise ValueError(
                f"{self.path} is not a label store ({error}): pass a new file name, or the sqlite file a "
                "previous run wrote with LabelStore(path)"
            ) from error

    def _check_schema(self) -> None:
        """Raise sqlite3.DatabaseError if a table of this name exists with other columns (another app's)."""
        for table, expected in (("frames", "frame"), ("labels", "preference"), ("window_scores", "scores")):
            columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if expected not in columns:
                raise sqlite3.DatabaseError(f"its table {table!r} has no column {expected!r}")

    def _add_missing_columns(self) -> None:
        """Stores written before the true rewards were kept gain their (empty) columns."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(labels)")}
        for column in ("gt_reward_a", "gt_reward_b"):
            if column not in columns:
                self._db.execute(f"ALTER TABLE labels ADD COLUMN {column} REAL")

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM labels").fetchone()[0]

    def add(
        self,
        record: LabelRecord,
        frame_a: np.ndarray,
        frame_b: np.ndarray,
        input_a: Optional[np.ndarray] = None,
        input_b: Optional[np.ndarray] = None,
    ) -> None:
        """Commit one answer and both its frames (and reward-model inputs, if not the frames)."""
        rows = [
            (record.hash_a, encode_array(frame_a), None if input_a is None else encode_array(input_a)),
            (record.hash_b, encode_array(frame_b), None if input_b is None else encode_array(input_b)),
        ]
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO frames VALUES (?, ?, ?)", rows)
            self._db.execute(
                "INSERT OR REPLACE INTO labels (hash_a, hash_b, goal, labeler_id, prompt_version, preference,"
                " soft, raw, latency_s, created, gt_reward_a, gt_reward_b) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.hash_a,
                    record.hash_b,
                    record.goal,
                    record.labeler_id,
                    record.prompt_version,
                    record.preference,
                    record.soft,
                    record.raw,
                    record.latency_s,
                    record.created,
                    _finite_or_none(record.gt_reward_a),
                    _finite_or_none(record.gt_reward_b),
                ),
            )

    def lookup(
        self, hash_a: str, hash_b: str, goal: str, labeler_id: str, prompt_version: str
    ) -> Optional[LabelRecord]:
        """The stored answer to this query, with the pair in either order (the answer flipped to match)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT hash_a, preference, soft, raw, latency_s, created, gt_reward_a, gt_reward_b FROM labels"
                " WHERE goal = ? AND"
                " labeler_id = ? AND prompt_version = ? AND ((hash_a = ? AND hash_b = ?) OR (hash_a = ? AND"
                " hash_b = ?)) LIMIT 1",
                (goal, labeler_id, prompt_version, hash_a, hash_b, hash_b, hash_a),
            ).fetchall()
        if not rows:
            return None
        stored_a, preference, soft, raw, latency_s, created, gt_a, gt_b = rows[0]
        if stored_a != hash_a:
            preference = preference if preference == NO_PREFERENCE else 1 - preference
            soft = None if soft is None else 1.0 - soft
            gt_a, gt_b = gt_b, gt_a
        return LabelRecord(hash_a, hash_b, goal, labeler_id, prompt_version, preference, soft, raw, latency_s, created,
                           gt_a, gt_b)

    def records(
        self, goal: Optional[str] = None, labeler_id: Optional[str] = None, prompt_version: Optional[str] = None
    ) -> List[LabelRecord]:
        """Stored answers, oldest first, filtered by whichever of goal, labeler and prompt are given."""
        clauses, params = [], []
        for column, value in (("goal", goal), ("labeler_id", labeler_id), ("prompt_version", prompt_version)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._db.execute(
                "SELECT hash_a, hash_b, goal, labeler_id, prompt_version, preference, soft, raw, latency_s, created,"
                f" gt_reward_a, gt_reward_b FROM labels {where} ORDER BY id",
                params,
            ).fetchall()
        return [LabelRecord(*row) for row in rows]

    def add_scores(self, record: ScoreRecord) -> None:
        """Commit one answered window query; NaN scores are stored as JSON nulls."""
        scores = [None if np.isnan(score) else float(score) for score in record.scores]
        with self._lock:  # one statement: autocommit commits it before this returns
            self._db.execute(
                "INSERT OR REPLACE INTO window_scores (window_hash, frame_hashes, actions, goal, labeler_id,"
                " prompt_version, scores, raw, latency_s, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.window_hash,
                    json.dumps(list(record.frame_hashes)),
                    record.actions,
                    record.goal,
                    record.labeler_id,
                    record.prompt_version,
                    json.dumps(scores),
                    record.raw,
                    record.latency_s,
                    record.created,
                ),
            )

    def lookup_scores(
        self, window_hash_: str, goal: str, labeler_id: str, prompt_version: str
    ) -> Optional[ScoreRecord]:
        """The stored answer to this window query, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT frame_hashes, actions, scores, raw, latency_s, created FROM window_scores WHERE"
                " window_hash = ? AND goal = ? AND labeler_id = ? AND prompt_version = ?",
                (window_hash_, goal, labeler_id, prompt_version),
            ).fetchone()
        if row is None:
            return None
        frame_hashes, actions, scores, raw, latency_s, created = row
        scores = tuple(float("nan") if score is None else score for score in json.loads(scores))
        return ScoreRecord(window_hash_, tuple(json.loads(frame_hashes)), actions, goal, labeler_id, prompt_version,
                           scores, raw, latency_s, created)

    def frame(self, frame_hash_: str) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """The stored frame and reward-model input (None when the input is the frame) of a hash."""
        with self._lock:
            row = self._db.execute("SELECT frame, reward_input FROM frames WHERE hash = ?", (frame_hash_,)).fetchone()
        if row is None:
            raise KeyError(f"frame {frame_hash_} is not in the label store {self.path}")
        return decode_array(row[0]), None if row[1] is None else decode_array(row[1])

    def close(self) -> None:
        with self._lock:
            self._db.close()
