import pytest

from pacs.uids import is_valid_ae_title, is_valid_uid


@pytest.mark.parametrize(
    "uid",
    ["1.2.840.10008.5.1.4.1.1.2", "2.25.0", "0", "1." + "2" * 62],
)
def test_valid_uids(uid: str) -> None:
    assert is_valid_uid(uid)


@pytest.mark.parametrize(
    "uid",
    [
        "",
        "1.2.",  # empty component
        ".1.2",
        "1..2",
        "1.02.3",  # leading zero (PS3.5 9.1)
        "1.2.abc",
        "1.2.3 ",
        "1." + "2" * 63,  # 65 characters
        "../../etc/passwd",
        "1.2/3",
        None,
        123,
    ],
)
def test_invalid_uids(uid: object) -> None:
    assert not is_valid_uid(uid)


def test_ae_titles() -> None:
    assert is_valid_ae_title("PACS")
    assert is_valid_ae_title("STORESCU 1")
    assert not is_valid_ae_title("")
    assert not is_valid_ae_title("    ")
    assert not is_valid_ae_title("A" * 17)
    assert not is_valid_ae_title("BACK\\SLASH")
