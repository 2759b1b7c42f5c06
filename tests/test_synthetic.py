"""The synthetic scene: deterministic frames whose truth (alpha, background) is exact."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from composites import make_composite

from edge_matte.capture import scene as synth
from edge_matte.capture.synthetic import SceneScript, SyntheticSource, parse_uri
from edge_matte.errors import ConfigError, SourceError, SourceTimeout

SMALL = {"width": 160, "height": 120}  # small frames keep the timeline tests fast


def source(**fields: object) -> SyntheticSource:
    return SyntheticSource(SceneScript(**{**SMALL, **fields}), realtime=False)


def coverage(src: SyntheticSource, index: int) -> float:
    return float(src.frame_at(index).truth_alpha.mean())


def test_frames_are_deterministic_per_seed_and_index() -> None:
    a, b = source(seed=3), source(seed=3)
    for index in (0, 70, 150):
        fa, fb = a.frame_at(index), b.frame_at(index)
        assert np.array_equal(fa.image, fb.image)
        assert np.array_equal(fa.truth_alpha, fb.truth_alpha)
        assert np.array_equal(fa.truth_background, fb.truth_background)
    other = source(seed=4).frame_at(70)
    assert not np.array_equal(other.truth_background, a.frame_at(70).truth_background)


def test_truth_fields_describe_the_image() -> None:
    src = source(noise_sigma=2.0)
    frame = src.frame_at(90)  # subject standing
    assert frame.image.shape == (120, 160, 3) and frame.image.dtype == np.uint8
    assert frame.truth_alpha.shape == (120, 160) and frame.truth_alpha.dtype == np.float32
    assert (
        frame.truth_background.shape == (120, 160, 3) and frame.truth_background.dtype == np.uint8
    )
    alpha = frame.truth_alpha
    assert alpha.min() >= 0 and alpha.max() <= 1
    assert ((alpha > 0.05) & (alpha < 0.95)).sum() > 50  # soft edge and hair: fractional alpha
    residual = frame.image.astype(np.float32) - frame.truth_background
    empty = alpha == 0
    assert abs(residual[empty].std() - 2.0) < 0.3  # only sensor noise where nothing is in front
    assert np.abs(residual[alpha > 0.99]).mean() > 15  # the subject differs from the room


def test_whole_subject_in_view_and_background_exact_around_it() -> None:
    frame = source(noise_sigma=0.0).frame_at(90)
    assert frame.truth_alpha.sum() == pytest.approx(synth.subject(120, 0).alpha.sum(), rel=0.02)
    outside = frame.truth_alpha == 0
    assert np.array_equal(frame.image[outside], frame.truth_background[outside])


def test_timeline_empty_then_subject_then_empty_then_again() -> None:
    src = source()  # enter 30, walk 30, stay 90, empty 60: visible 30..179, again from 240
    assert all(coverage(src, i) == 0 for i in (0, 15, 29))
    standing = [coverage(src, i) for i in (60, 100, 149)]
    assert min(standing) > 0.1
    assert 0 < coverage(src, 45) < standing[0]  # walking in, partly in view
    assert all(coverage(src, i) == 0 for i in (185, 210, 239))
    assert coverage(src, 240 + 60) > 0.1  # the cycle repeats


def test_no_cycle_stays_empty_and_no_leave_stays_forever() -> None:
    assert coverage(source(cycle=False), 300) == 0
    assert coverage(source(leave=False), 5000) > 0.1


def test_present_from_start_stands_perfectly_still() -> None:
    src = source(present_from_start=True, stay_frames=40)
    first = src.frame_at(0).truth_alpha
    assert first.mean() > 0.1
    for index in (1, 20, 39):
        assert np.array_equal(src.frame_at(index).truth_alpha, first)
    assert not np.array_equal(src.frame_at(45).truth_alpha, first)  # then walks out


def test_several_subjects_keep_the_scene_busy() -> None:
    src = source(subjects=3)
    script = src.script
    start = script.enter_frame + script.walk_frames
    assert all(script.truth_at(i).placements for i in range(start, start + 3 * script.period))
    busy = [coverage(src, i) for i in range(start, start + script.period, 7)]
    assert min(busy) > 0.05
    assert max(len(script.truth_at(i).placements) for i in range(300)) >= 2


def test_light_ramp_scales_the_background() -> None:
    src = source(light_ramp=0.3, ramp_frames=100)
    base = src.frame_at(0).truth_background.astype(np.float64).mean()
    assert src.frame_at(50).truth_background.mean() / base == pytest.approx(1.15, abs=0.01)
    assert src.frame_at(100).truth_background.mean() / base == pytest.approx(1.3, abs=0.01)
    assert src.frame_at(200).truth_background.mean() / base == pytest.approx(1.3, abs=0.01)


def test_camera_shift_moves_the_background() -> None:
    src = source(shift_at=10, shift_px=[4, 2])  # any pair of numbers
    before, after = src.frame_at(9).truth_background, src.frame_at(10).truth_background
    assert np.array_equal(before, synth.to_uint8(synth.room(160, 120, 0)))
    assert np.abs(after[2:, 4:].astype(int) - before[:-2, :-4]).max() <= 1
    assert np.abs(after.astype(int) - before).mean() > 1


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("test://", {}),
        ("test:///", {}),
        ("test://?subjects=2&light_ramp=0.3&seed=3", {"subjects": 2, "light_ramp": 0.3, "seed": 3}),
        ("test://?shift_at=100&shift_px=4,2", {"shift_at": 100, "shift_px": (4.0, 2.0)}),
        (
            "test://?present_from_start=yes&leave=false&cycle=0",
            {"present_from_start": True, "leave": False, "cycle": False},
        ),
        ("test://?width=320&height=240&fps=15", {"width": 320, "height": 240, "fps": 15.0}),
        ("test://?noise_sigma=0&shift_at=none", {"noise_sigma": 0.0, "shift_at": None}),
    ],
)
def test_parse_uri_accepts(uri: str, expected: dict[str, object]) -> None:
    script = parse_uri(uri, 640, 480, 30.0)
    assert script == SceneScript(**{"width": 640, "height": 480, "fps": 30.0, **expected})


@pytest.mark.parametrize(
    ("uri", "named"),
    [
        ("test://?subject=2", "subject"),
        ("test://?subjects=two", "subjects"),
        ("test://?leave=maybe", "leave"),
        ("test://?shift_px=1,2,3", "shift_px"),
        ("test://?seed=-1", "seed"),
        ("test://?subjects=0", "subjects"),
        ("test://?fps=0", "fps"),
        ("test://?light_ramp=5", "light_ramp"),
        ("test://?bogus=1&walk_frames=x", "bogus"),
        ("test://room", "test://"),
        ("file:///x.mp4", "test://"),
    ],
)
def test_parse_uri_rejects_naming_the_problem(uri: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        parse_uri(uri, 640, 480, 30.0)


def test_uri_round_trips() -> None:
    script = SceneScript(
        width=320,
        height=240,
        subjects=2,
        light_ramp=-0.2,
        shift_at=5,
        shift_px=(1.5, -2.0),
        present_from_start=True,
    )
    src = SyntheticSource(script, realtime=False)
    assert src.info.width == 320 and src.info.height == 240 and src.info.uri.startswith("test://?")
    assert parse_uri(src.info.uri, 320, 240, script.fps) == script
    assert SceneScript().uri() == "test://"


def test_read_advances_and_close_is_final() -> None:
    src = source()
    frames = [src.read(timeout=1.0) for _ in range(3)]
    assert [f.index for f in frames] == [0, 1, 2]
    assert np.array_equal(frames[2].image, src.frame_at(2).image)
    assert frames[0].time <= frames[1].time <= frames[2].time
    src.close()
    src.close()
    with pytest.raises(SourceError):
        src.read(timeout=1.0)


def test_media_time_is_the_scene_clock() -> None:
    """index / fps, however late the frames are read: the scene's script counts frames."""
    src = source(fps=25.0)
    assert [src.read(timeout=1.0).media_time for _ in range(3)] == [0.0, 0.04, 0.08]
    assert src.frame_at(250).media_time == 10.0


def test_realtime_source_times_out_when_the_next_frame_is_not_due() -> None:
    src = SyntheticSource(SceneScript(**SMALL, fps=0.5), realtime=True)
    assert src.read(timeout=1.0).index == 0  # the first frame is due at once
    with pytest.raises(SourceTimeout):
        src.read(timeout=0.01)  # the next is two seconds away


def test_make_composite_builds_consistent_triples() -> None:
    for width, height in ((96, 64), (320, 240)):
        comp = make_composite(
            width, height, seed=2, gain=1.1, noise_sigma=0.0, plate_noise_sigma=0.0
        )
        assert comp.image.shape == comp.plate.shape == (height, width, 3)
        assert comp.alpha.shape == (height, width)
        rebuilt = (
            comp.alpha[..., None] * comp.foreground + (1 - comp.alpha[..., None]) * comp.background
        )
        assert np.abs(rebuilt - comp.image).max() <= 0.51  # I = a F + (1 - a) B gain, then rounded
        assert np.abs(comp.background - 1.1 * comp.plate).max() <= 0.6


def test_camouflage_puts_the_subject_near_the_room_colour() -> None:
    comp = make_composite(320, 240, seed=1, camouflage=18.0)
    inside = comp.alpha > 0.99
    lower = np.zeros_like(inside)
    lower[120:, 107:213] = True
    shirt = comp.foreground[inside & lower].mean(axis=0)
    room = comp.background[120:, 107:213].reshape(-1, 3).mean(axis=0)
    assert np.linalg.norm(shirt - room) < 40


def test_script_fields_all_settable_from_the_uri() -> None:
    """Each field, given a value other than what it would be without the query, takes it."""
    baseline = parse_uri("test://", 160, 120, 30.0)
    for spec in dataclasses.fields(SceneScript):
        if spec.init:
            text, value = _sample(spec.default)
            script = parse_uri(f"test://?{spec.name}={text}", 160, 120, 30.0)
            assert getattr(baseline, spec.name) != value, spec.name  # the check can fail
            assert getattr(script, spec.name) == value, spec.name


def _sample(default: object) -> tuple[str, object]:
    """A value unlike `default`, as the query spells it and as the script holds it."""
    if isinstance(default, bool):
        return ("false", False) if default else ("true", True)
    if isinstance(default, tuple):
        return "1.5,-2", (1.5, -2.0)
    if default is None:
        return "7", 7
    if isinstance(default, int):
        return str(default + 2), default + 2
    assert isinstance(default, float)
    return str(default + 0.25), default + 0.25
