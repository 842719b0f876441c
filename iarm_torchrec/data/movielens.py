"""MovieLens-1M (GroupLens): ``users.dat``, ``movies.dat`` (ISO-8859-1) and ``ratings.dat``, ``::``-separated.

The protocol of the IARM and AutoInt papers: a rating above 3 is a click (1), below 3 a non-click
(0), a rating of 3 is dropped (739,012 samples, 575,281 positive). Two field sets:

* ``paper`` (AutoInt's 7 fields): ``gender``, ``age``, ``occupation``, ``zip``, ``genres``
  (multi-hot), ``year`` (release year from the title, ``"Toy Story (1995)"``: one bucket per decade
  before 1970, e.g. ``"1950s"``, single years from 1970), and ``timestamp``, the one numerical
  field. User fields: gender, age, occupation, zip.
* ``ids``: ``user_id``, ``movie_id``, ``gender``, ``age``, ``occupation``, ``zip``, ``genres``.
  User fields: user_id, gender, age, occupation, zip.

The whole dataset is read in memory (one chunk; about a second for the million ratings). The time
split ranks ratings by ``timestamp`` (ties in file order).
"""

import re
from typing import Dict, List, Optional, Tuple

import numpy as np

from iarm_torchrec.data.rows import PATHS, Chunk, RawRows, RowReader, Table, find_file, open_file, parse_ints
from iarm_torchrec.data.rows import naming, split_table
from iarm_torchrec.data.vocab import token_keys

FIELD_SETS: Dict[str, Tuple[List[str], List[str], List[str]]] = {
    # name: (sparse fields in spec order, dense fields, user fields)
    "paper": (["gender", "age", "occupation", "zip", "genres", "year"], ["timestamp"], ["gender", "age", "occupation", "zip"]),
    "ids": (
        ["user_id", "movie_id", "gender", "age", "occupation", "zip", "genres"],
        [],
        ["user_id", "gender", "age", "occupation", "zip"],
    ),
}
USER_COLUMNS = ["user_id", "gender", "age", "occupation", "zip"]
MOVIE_COLUMNS = ["movie_id", "title", "genres"]
RATING_COLUMNS = ["user_id", "movie_id", "rating", "timestamp"]
_YEAR = re.compile(rb"\((\d{4})\)\s*$")


def year_token(year: int) -> bytes:
    """The ``year`` field's value: a decade bucket before 1970, the year itself from 1970.

    >>> year_token(1995), year_token(1969), year_token(1919)
    (b'1995', b'1960s', b'1910s')
    """
    return str(year).encode() if year >= 1970 else f"{year // 10 * 10}s".encode()


class MovieLensReader(RowReader):
    """Samples of MovieLens-1M, joined from its three files.

    Args:
        source: the folder holding ``users.dat``, ``movies.dat`` and ``ratings.dat`` (plain or ``.gz``).
        field_set: ``"paper"`` or ``"ids"`` (see the module docstring).
        labelled: must be ``True`` (every rating is a label).
        skip_bad_rows: drop and count bad lines instead of raising (ratings of a dropped user or
            movie are dropped and counted too).
        keep_neutral: keep the rating-3 rows (labelled 0), which the training protocol drops;
            ``iarm predict`` keeps them so that every input row gets a score.
        max_field_bytes, max_line_bytes: length limits (see :mod:`iarm_torchrec.data.rows`).
    """

    dataset = "movielens-1m"
    multi_hot_fields = ["genres"]
    time_ordered = False

    def __init__(
        self,
        source: str,
        *,
        field_set: str = "paper",
        labelled: bool = True,
        skip_bad_rows: bool = False,
        keep_neutral: bool = False,
        **limits: int,
    ) -> None:
        super().__init__(source, labelled=labelled, skip_bad_rows=skip_bad_rows, **limits)
        self.keep_neutral = keep_neutral
        if field_set not in FIELD_SETS:
            raise ValueError(f"MovieLens field_set must be one of {sorted(FIELD_SETS)}, got {field_set!r}")
        if not labelled:
            raise ValueError("MovieLens ratings are always labelled; labelled=False does not apply")
        if not PATHS.isdir(source):
            raise NotADirectoryError(f"{source}: expected the MovieLens-1M folder (users.dat, movies.dat, ratings.dat)")
        self.field_set = field_set
        self.sparse_fields, self.dense_fields, self.user_fields = (list(x) for x in FIELD_SETS[field_set])
        self.paths = {name: find_file(source, [f"{name}.dat"]) for name in ("users", "movies", "ratings")}
        self._rows: Optional[RawRows] = None  # parsed once: counting and encoding both read all of it

    def __getstate__(self) -> Dict[str, object]:
        return {**self.__dict__, "_rows": None}

    def plan(self, chunk_bytes: int) -> List[Chunk]:
        return [self._whole("ratings")[1]]

    def _whole(self, name: str) -> Tuple[bytes, Chunk]:
        path = self.paths[name]
        with open_file(path) as f, naming(path):
            data = f.read()
        if not data.strip():
            raise ValueError(f"{path}: empty file (no rows)")
        lines = data.count(b"\n") + (not data.endswith(b"\n"))
        return data, Chunk(0, path, 0, len(data), False, 1, 0, lines)

    def _table(self, name: str, columns: List[str], ascii_only: bool = True) -> Table:
        data, chunk = self._whole(name)
        return split_table(data, chunk, b"::", ", ".join(columns), len(columns), self.skip_bad_rows, ascii_only, **self.limits)

    def parse(self, chunk: Chunk, data: Optional[bytes]) -> RawRows:
        if self._rows is None:
            self._rows = self._parse()
        return self._rows

    def _parse(self) -> RawRows:
        users = self._table("users", USER_COLUMNS)
        user_ids = self._ids(users, "user_id")
        user_keys = token_keys(users.tokens[:, 1:])  # gender, age, occupation, zip
        user_keys = np.concatenate([token_keys(users.tokens[:, :1]), user_keys], axis=1)[~users.checker.bad]

        movies = self._table("movies", MOVIE_COLUMNS, ascii_only=False)
        movie_ids = self._ids(movies, "movie_id")
        years = np.zeros(len(movies.lines), dtype="S5")
        for i, title in enumerate(movies.tokens[:, 1]):
            match = _YEAR.search(title)
            if match:
                years[i] = year_token(int(match.group(1)))
        movies.checker.flag_field(years == b"", "title", movies.tokens[:, 1], "has no release year '(YYYY)' at its end")
        good = ~movies.checker.bad
        genre_lists = [g.split(b"|") if g else [] for g in movies.tokens[good, 2]]
        genre_lengths = np.array([len(g) for g in genre_lists], dtype=np.int64)
        genre_keys = token_keys(np.array([t for g in genre_lists for t in g] or [b""]))[: genre_lengths.sum()]
        movie_keys = token_keys(np.stack([movies.tokens[good, 0], years[good]], axis=1))  # movie_id, year

        ratings = self._table("ratings", RATING_COLUMNS)
        ints = [parse_ints(ratings, j, name, allow_missing=False) for j, name in enumerate(RATING_COLUMNS)]
        user, movie, rating, timestamp = (np.nan_to_num(x).astype(np.int64) for x in ints)
        check = ratings.checker
        check.flag_field((rating < 1) | (rating > 5), "rating", ratings.tokens[:, 2], "is not a rating in 1..5")
        user_row = _lookup(user_ids[~users.checker.bad], user)
        movie_row = _lookup(movie_ids[good], movie)
        check.flag_field(user_row < 0, "user_id", ratings.tokens[:, 0], f"is not a user of {self.paths['users']}")
        check.flag_field(movie_row < 0, "movie_id", ratings.tokens[:, 1], f"is not a movie of {self.paths['movies']}")
        kept = ~check.bad & ((rating != 3) | self.keep_neutral)

        user_row, movie_row, timestamp = user_row[kept], movie_row[kept], timestamp[kept]
        columns = {name: user_keys[user_row, j] for j, name in enumerate(USER_COLUMNS)}
        columns["movie_id"], columns["year"] = movie_keys[movie_row, 0], movie_keys[movie_row, 1]
        sparse = np.stack([columns[f] for f in self.one_hot_fields], axis=1)
        lengths = genre_lengths[movie_row]
        starts = np.concatenate(([0], np.cumsum(genre_lengths)[:-1]))[movie_row]
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        genres = (genre_keys[np.repeat(starts, lengths) + within], lengths.astype(np.int32))
        dense = timestamp[:, None].astype(np.float64) if self.dense_fields else np.zeros((len(timestamp), 0))
        rows = ratings.rows[kept]
        order = np.lexsort((rows, timestamp))
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        skipped = users.checker.skipped + movies.checker.skipped + check.skipped
        return RawRows(
            lines=ratings.lines[kept],
            rows=rows,
            labels=(rating[kept] > 3).astype(np.float32),
            dense=dense,
            sparse=sparse,
            multi_hot={"genres": genres},
            rank=rank,
            ranked=len(rank),
            skipped=skipped,
            skipped_examples=(users.checker.examples + movies.checker.examples + check.examples)[:5],
            neutral=int((kept & (rating == 3)).sum()),
        )

    @staticmethod
    def _ids(table: Table, name: str) -> np.ndarray:
        """The id column (first) of a users/movies table, each id once."""
        ids = np.nan_to_num(parse_ints(table, 0, name, allow_missing=False)).astype(np.int64)
        uniq, first, counts = np.unique(ids, return_index=True, return_counts=True)
        again = np.zeros(len(ids), dtype=bool)
        again[np.setdiff1d(np.arange(len(ids)), first)] = True
        table.checker.flag_field(again & ~table.checker.bad, name, table.tokens[:, 0], "appears twice")
        return ids


def _lookup(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Position of each ``wanted`` id in ``ids`` (unique), -1 where absent."""
    order = np.argsort(ids)
    pos = np.searchsorted(ids[order], wanted)
    pos = np.minimum(pos, max(len(ids) - 1, 0))
    found = (ids[order][pos] == wanted) if len(ids) else np.zeros(len(wanted), dtype=bool)
    return np.where(found, order[pos] if len(ids) else -1, -1)
