"""What a training leaves, read with bounds (execution/leftovers.py): real files, links, FIFOs and deep trees in tmp_path."""

from __future__ import annotations

import os

from autoresearch.execution.leftovers import Limits, digest, disk_usage, remove_tree, survey


def test_a_plain_model_folder_is_surveyed_and_hashed_in_name_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "weights.bin").write_bytes(b"x" * 10)
    (tmp_path / "model.json").write_text("{}")
    found = survey(tmp_path)
    assert found.problem is None and [name for name, _ in found.files] == ["b/weights.bin", "model.json"]
    assert digest(tmp_path, found)[0] == 12


def test_links_fifos_sparse_files_and_deep_trees_are_refused_from_lstat_alone(tmp_path):
    link = tmp_path / "link"
    link.mkdir()
    (link / "pagemap").symlink_to("/proc/self/pagemap")
    assert "a symbolic link" in survey(link).problem
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "pipe")
    assert "a FIFO" in survey(fifo).problem
    sparse = tmp_path / "sparse"
    sparse.mkdir()
    with open(sparse / "huge.bin", "wb") as handle:
        handle.truncate(1 << 40)  # a TiB that takes no disk
    assert "disk quota" in survey(sparse, Limits.for_quota(1)).problem
    deep = tmp_path / "deep"
    path = deep
    for _ in range(40):
        path = path / "d"
    path.mkdir(parents=True)
    assert "deeper than 16 levels" in survey(deep).problem
    many = tmp_path / "many"
    many.mkdir()
    for index in range(30):
        (many / str(index)).write_text("")
    assert "more than 20 files" in survey(many, Limits(entries=20)).problem


def test_disk_usage_counts_what_a_running_training_wrote(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data.bin").write_bytes(os.urandom(1 << 20))
    (tmp_path / "link").symlink_to("/etc/passwd")
    used, entries = disk_usage(tmp_path)
    assert used >= 1 << 20 and entries == 3
    assert disk_usage(tmp_path / "missing") == (0, 0)


def test_remove_tree_removes_a_tree_too_deep_for_recursion(tmp_path):
    root = tmp_path / "model"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY)
    for _ in range(1500):  # deeper than PATH_MAX: made one level at a time, through descriptors
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(os.open("file", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    os.close(fd)
    remove_tree(root)
    assert not root.exists()
