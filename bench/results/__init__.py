"""An experiment's results read back from its run folders: the records (:mod:`.records`), the
leaderboard and its tables (:mod:`.leaderboard`, rows in :mod:`.rows`), the one validation order
(:mod:`.ranking`) and the published numbers a run is compared with (:mod:`.published`).
"""

from bench.results.leaderboard import (LEADERBOARD_CSV, PER_CLASS_CSV, SUMMARY_CSV, build_leaderboard,
                                       format_leaderboard, refresh_leaderboard, write_leaderboard)

__all__ = ["build_leaderboard", "write_leaderboard", "refresh_leaderboard", "format_leaderboard",
           "LEADERBOARD_CSV", "PER_CLASS_CSV", "SUMMARY_CSV"]
