"""A worker group's settings: a model's hosts, parallel, backend and python in the config file, and the group ports."""

from __future__ import annotations

import sys

import pytest

from mlxtrio import Config


def _config(tmp_path, text: str, env: dict | None = None) -> Config:
    path = tmp_path / "groups.toml"
    path.write_text(text)
    return Config.from_environment(env=env or {}, config_file=path)


def test_a_model_with_hosts_is_a_group_with_defaults(tmp_path):
    config = _config(tmp_path, '[models.big]\npath = "/m"\nhosts = ["127.0.0.1", "127.0.0.1"]\n[models.small]\npath = "/s"\n')
    big, small = config.model_settings("big"), config.model_settings("small")
    assert (big.hosts, big.parallel, big.backend, big.python) == (("127.0.0.1", "127.0.0.1"), "pipeline", "ring", sys.executable)
    assert (small.hosts, small.parallel, small.backend, small.python) == ((), None, None, None)
    assert (config.group_port, config.group_ssh) == (32323, "ssh -o BatchMode=yes")
    assert config.describe()["models"]["big"]["hosts"] == ("127.0.0.1", "127.0.0.1")
    tensor = _config(
        tmp_path,
        '[models.big]\npath = "/m"\nhosts = ["::1", "[::1]", "::1"]\nparallel = "tensor"\nbackend = "jaccl"\npython = "/opt/py"\n'
        'rdma = [["", "rdma_en2", "rdma_en3"], ["rdma_en2", "", ["rdma_en4", "rdma_en5"]], ["rdma_en3", "rdma_en4", ""]]\n',
    ).model_settings("big")
    assert (tensor.hosts, tensor.parallel, tensor.backend, tensor.python) == (("::1",) * 3, "tensor", "jaccl", "/opt/py")
    # mlx.distributed_config's null (no cable) is "" in TOML; several cables between two Macs, a list.
    assert tensor.rdma == ((None, "rdma_en2", "rdma_en3"), ("rdma_en2", None, ("rdma_en4", "rdma_en5")), ("rdma_en3", "rdma_en4", None))


def test_group_ports_and_ssh_come_from_the_environment_or_the_file(tmp_path):
    config = _config(tmp_path, 'group_port = 20000\ngroup_ssh = "ssh -i /k/id -o BatchMode=yes"\n', {"MLX_GROUP_PORT": "21000"})
    assert (config.group_port, config.group_ssh) == (21000, "ssh -i /k/id -o BatchMode=yes")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('hosts = ["127.0.0.1"]', "at least two"),
        ('hosts = "127.0.0.1,127.0.0.1"', "must be a list of IP addresses"),
        ('hosts = ["127.0.0.1", "mac-2.local"]', "'mac-2.local' is not an IP address"),
        ('hosts = ["127.0.0.1", "10.0.0.2"]', "a loopback address cannot be reached from another host"),
        ('hosts = ["192.0.2.7", "192.0.2.8"]', "192.0.2.7 is no address of this machine"),
        ('hosts = ["127.0.0.1", "127.0.0.1"]\nparallel = "data"', 'parallel = \'data\': must be "pipeline" or "tensor"'),
        ('hosts = ["127.0.0.1", "127.0.0.1"]\nbackend = "mpi"', "backend = 'mpi': must be"),
        ('hosts = ["127.0.0.1", "127.0.0.1"]\nparallel = 2', "must be a string, not int"),
        ('hosts = ["127.0.0.1", "127.0.0.1"]\npython = " "', "python must name the interpreter"),
        ('parallel = "tensor"\nbackend = "ring"', "parallel, backend without hosts"),
        ('python = "/opt/py"', "python without hosts"),
        ('rdma = [["", "a"], ["a", ""]]', "rdma without hosts"),
        ('hosts = ["127.0.0.1", "127.0.0.1"]\nbackend = "jaccl"', 'backend = "jaccl" needs it'),
        ('hosts = ["127.0.0.1", "127.0.0.1"]\nrdma = [["", "a"], ["a", ""]]', "and only it takes it"),
        ('hosts = ["127.0.0.1", "127.0.0.1"]\nbackend = "jaccl"\nrdma = [["", "a"]]', "a row for each of the 2 hosts"),
        ('hosts = ["127.0.0.1", "127.0.0.1"]\nbackend = "jaccl"\nrdma = [["", 5], ["a", ""]]', "5 is not a device name"),
        ('hosts = ["127.0.0.1", "127.0.0.1"]\nbackend = "jaccl"\nrdma = "a"', "rdma must be a list with a list for each rank"),
    ],
)
def test_a_wrong_group_says_what_and_where(tmp_path, text, message):
    with pytest.raises(ValueError, match="groups.toml: models.big") as raised:
        _config(tmp_path, f'[models.big]\npath = "/m"\n{text}\n')
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("group_port = 80", {}, "groups.toml: group_port = 80: must be at least 1024 and at most 32512"),
        ("group_port = 32600", {}, "below the ephemeral range at 32768"),
        ("group_port = true", {}, "group_port = True: expected a port number"),
        ("", {"MLX_GROUP_PORT": "40000"}, "MLX_GROUP_PORT='40000': must be at least 1024"),
        ('group_ssh = "ssh \'unclosed"', {}, "groups.toml: group_ssh = \"ssh 'unclosed\": No closing quotation"),
        ('group_ssh = " "', {}, "groups.toml: group_ssh = ' ': must be a command line"),
        ("group_ssh = 5", {}, "group_ssh = 5: must be a string"),
    ],
)
def test_wrong_group_ports_or_ssh_are_refused(tmp_path, text, env, message):
    with pytest.raises(ValueError) as raised:
        _config(tmp_path, text + "\n", env)
    assert message in str(raised.value)


def test_the_worker_is_given_the_group_as_the_file_says(tmp_path):
    from mlxtrio.orchestrator import ModelCatalog

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "qwen2"}')
    config = _config(
        tmp_path,
        f'[models.big]\npath = "{model}"\nhosts = ["127.0.0.1", "127.0.0.1"]\nparallel = "tensor"\nbackend = "jaccl"\n'
        'rdma = [["", "rdma_en2"], ["rdma_en2", ""]]\n[models.small]\npath = "' + str(model) + '"\n',
    )
    catalog = ModelCatalog(config)
    group = catalog.worker_config(catalog.resolve("big")).group
    assert (group.hosts, group.parallel, group.backend) == (("127.0.0.1", "127.0.0.1"), "tensor", "jaccl")
    assert group.rdma == ((None, "rdma_en2"), ("rdma_en2", None))
    assert catalog.worker_config(catalog.resolve("small")).group is None
