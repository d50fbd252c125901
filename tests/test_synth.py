"""The synthetic dataset's options: other image sizes, object scales and class styles."""
import numpy as np
import pytest

from data_tools import synth


def test_options_change_sizes_scales_and_styles_and_defaults_stay_put():
    base = [synth.make_example(i, 5) for i in range(12)]
    explicit = [synth.make_example(i, 5, (128, 176), 1.0, "default") for i in range(12)]
    for (a, ma, sa, ca), (b, mb, sb, cb) in zip(base, explicit):
        assert (a == b).all() and (ma == mb).all() and (sa == sb).all() and ca == cb
    big = [synth.make_example(i, 5, (220, 260)) for i in range(12)]
    assert all(220 <= m.shape[0] <= 260 and 220 <= m.shape[1] <= 260 for _, m, _, _ in big)

    def fg(examples):
        return np.mean([(m > 0).mean() for _, m, _, _ in examples])
    assert fg([synth.make_example(i, 5, object_scale=1.4) for i in range(12)]) > 1.3 * fg(base)
    # Style "other": the classes keep their ids but are drawn in other colours.
    for i in range(12):
        rgb, mask, _, _ = synth.make_example(i, 5, style="other")
        for cls in np.unique(mask[mask > 0]):
            mean = rgb[mask == cls].mean(0)
            default = np.asarray(synth.CLASSES[int(cls)][1], np.float32)
            other = np.asarray(synth.OTHER_CLASSES[int(cls)][1], np.float32)
            assert np.abs(mean - other).sum() < np.abs(mean - default).sum()


@pytest.mark.parametrize("flags", [["--image-size", "10"], ["--image-size", "200,100"], ["--object-scale", "0"],
                                   ["--style", "nosuch"]])
def test_bad_options_are_refused(tmp_path, flags, capsys):
    with pytest.raises(SystemExit) as exc:
        synth.main(["--out", str(tmp_path / "out"), *flags])
    assert exc.value.code == 2
    assert flags[0] in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
