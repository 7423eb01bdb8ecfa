"""Write coalescing of consecutive broadcasts (gateway.commands.coalesce): pure."""

from __future__ import annotations

from pygatewayworker.gateway.commands import Frames, coalesce, data_frame
from pygatewayworker.gateway.frames import binary_frame, text_frame
from pygatewayworker.gateway.protocol import Cmd


def test_a_run_to_the_same_group_becomes_one_write_of_every_frame_in_order() -> None:
    packets = [[Cmd.SEND_TO_GROUP, ["g"], f"m{i}", None] for i in range(3)]
    (merged,) = coalesce(packets)
    frames = merged[2]
    assert type(frames) is Frames and frames.messages == 3
    assert frames == b"".join(text_frame(f"m{i}") for i in range(3))
    assert data_frame(frames) is frames


def test_different_targets_and_other_commands_are_not_merged() -> None:
    packets = [
        [Cmd.SEND_TO_GROUP, ["a"], "1", None],
        [Cmd.SEND_TO_GROUP, ["b"], "2", None],
        [Cmd.SEND_TO_GROUP, ["b"], "3", [5]],
        [Cmd.SEND_TO_CLIENT, 1, "4"],
        [Cmd.SEND_TO_UID, ["u"], b"5"],
        [Cmd.SEND_TO_UID, ["u"], b"6"],
        [Cmd.SEND_TO_ALL, "7", None, None],
    ]
    out = coalesce(packets)
    assert [p[0] for p in out] == [
        Cmd.SEND_TO_GROUP,
        Cmd.SEND_TO_GROUP,
        Cmd.SEND_TO_GROUP,
        Cmd.SEND_TO_CLIENT,
        Cmd.SEND_TO_UID,
        Cmd.SEND_TO_ALL,
    ]
    assert out[4][2] == binary_frame(b"5") + binary_frame(b"6")


def test_a_run_with_a_malformed_message_is_left_for_the_normal_path() -> None:
    packets = [[Cmd.SEND_TO_ALL, "ok", None, None], [Cmd.SEND_TO_ALL, 42, None, None]]
    assert coalesce(packets) == packets
