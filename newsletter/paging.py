"""Where one page of a long admin list sits among all its matches (readers, the suppression list)."""

from __future__ import annotations

import math


class PageNumbers:
    """For a page's dataclass with `total`, `page` (from 1) and `per_page`, and its rows' count in `shown`."""

    total: int
    page: int
    per_page: int

    @property
    def shown(self) -> int:
        raise NotImplementedError("a page says how many of its rows it holds")

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))

    @property
    def first_number(self) -> int:
        return (self.page - 1) * self.per_page + 1 if self.shown else 0

    @property
    def last_number(self) -> int:
        return (self.page - 1) * self.per_page + self.shown
