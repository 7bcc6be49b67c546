"""Git reference mirrors: is each CI fleet's shared bare repository in step with its remote, and is its syncer
running?"""

from __future__ import annotations

from grafanalib import core as g

from dashboards import thresholds as t
from dashboards import variables
from dashboards.common import GIT_MIRRORS_UID
from dashboards.common import dashboard as make_dashboard
from dashboards.panels import GIT_MIRROR, VALUE, ZERO_IS_GOOD, Column, Grid, Query, sel, stat, table, timeseries

UID = GIT_MIRRORS_UID


def git_sel(metric: str) -> str:
    return sel(metric, GIT_MIRROR)


def per_mirror(selector: str) -> str:
    return f"max by (git_mirror) ({selector})"


def mirrors_table() -> g.Table:
    labels = [Column("git_mirror", "Git mirror", "string")]

    def column(
        metric: str, title: str, unit: str, steps: list[dict[str, object]] | None = None
    ) -> tuple[Query, Column]:
        return Query(per_mirror(git_sel(metric))), Column(VALUE, title, unit, steps)

    values: list[tuple[Query, Column | None]] = [
        column("bitbucket_mirror_git_refs_behind", "Refs behind", "short", ZERO_IS_GOOD),
        column("bitbucket_mirror_git_refs_extra", "Refs extra", "short"),
        column("bitbucket_mirror_git_behind_seconds", "Behind for", "s", t.GIT_STALE),
        (
            Query(per_mirror(f"time() - {git_sel('bitbucket_mirror_git_last_fetch_timestamp_seconds')}")),
            Column(VALUE, "Last fetch", "s"),
        ),
        (
            Query(per_mirror(f"time() - {git_sel('bitbucket_mirror_git_last_check_success_timestamp_seconds')}")),
            Column(VALUE, "Last check", "s"),
        ),
        column("bitbucket_mirror_git_objects_bytes", "Size", "bytes"),
    ]
    return table(
        "Git mirrors",
        "One row per git reference mirror: refs that differ from the remote or that the mirror lacks (behind), refs "
        "the remote no longer has (extra), how long it has differed (BitbucketMirrorGitMirrorStale past the "
        "threshold), how long ago its syncer last fetched and the exporter last compared it, and its size on disk.",
        labels,
        values,
        sort_by="Behind for",
    )


def dashboard() -> g.Dashboard:
    grid = Grid()
    grid.line(
        [
            stat(
                "Git mirrors behind",
                "Git mirrors whose refs differ from their remote now (BitbucketMirrorGitMirrorStale once it lasts).",
                Query(f"count({git_sel('bitbucket_mirror_git_refs_behind')} > 0) or vector(0)"),
                "short",
                ZERO_IS_GOOD,
            ),
            stat(
                "Checks failing",
                "Git mirrors the exporter cannot compare with their remote (BitbucketMirrorGitMirrorCheckFailing).",
                Query(
                    'count(bitbucket_mirror_exporter_poll_success{cluster=~"$cluster", job=~"$job", '
                    'source="git_refs", target=~"$git_mirror"} == 0) or vector(0)'
                ),
                "short",
                ZERO_IS_GOOD,
            ),
            stat(
                "Longest behind",
                "The longest time any git mirror has differed from its remote.",
                Query(f"max({git_sel('bitbucket_mirror_git_behind_seconds')}) or vector(0)"),
                "s",
                t.GIT_STALE,
            ),
        ],
        height=4,
    )
    grid.add(mirrors_table(), 24, 8)
    grid.line(
        [
            timeseries(
                "Refs behind",
                "Per git mirror, refs whose value differs from the remote's or that it lacks; pull-request refs "
                "are not counted.",
                [Query(git_sel("bitbucket_mirror_git_refs_behind"), "{{git_mirror}}")],
                "short",
            ),
            timeseries(
                "Behind for",
                "How long each git mirror has differed from its remote, as first seen. Dashed line: "
                "BitbucketMirrorGitMirrorStale.",
                [Query(git_sel("bitbucket_mirror_git_behind_seconds"), "{{git_mirror}}")],
                "s",
                t.GIT_STALE,
            ),
        ],
        height=8,
    )
    grid.line(
        [
            timeseries(
                "Since the last fetch",
                "How long ago each mirror's syncer last fetched (FETCH_HEAD): a line that only grows is a syncer "
                "that stopped.",
                [Query(f"time() - {git_sel('bitbucket_mirror_git_last_fetch_timestamp_seconds')}", "{{git_mirror}}")],
                "s",
            ),
            timeseries(
                "Size on disk",
                "Each mirror's objects (git count-objects -v): for the volume's disk alerts.",
                [Query(git_sel("bitbucket_mirror_git_objects_bytes"), "{{git_mirror}}")],
                "bytes",
            ),
        ],
        height=8,
    )
    return make_dashboard(
        "Bitbucket git reference mirrors",
        UID,
        "Whether each CI fleet's shared git reference mirror is in step with its remote, and its syncer running.",
        grid.panels,
        extra=[variables.git_mirror()],
        by_mirror=False,
    )
