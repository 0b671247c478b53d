"""The catalogue's exploratory data analysis (RecoNet report, section 3.1), as plots in the UI."""

import base64

import dagster as dg
import pyarrow as pa

from assets.resources import SKIP_MISSING_PARTITIONS, ReconetSettings
from ml.catalogue.eda import metadata_eda as run_metadata_eda


@dg.asset(group_name="catalogue", kinds={"python", "matplotlib"},
          ins={"tracks": dg.AssetIn(metadata={SKIP_MISSING_PARTITIONS: True})})  # fmt: skip
def metadata_eda(
    context: dg.AssetExecutionContext,
    settings: ReconetSettings,
    tracks: pa.Table,
    clean_tracks: pa.Table,
    rejected: pa.Table,
) -> dg.MaterializeResult:
    """Songs per artist, over- and sub-genres, releases per decade, year × over-genre, durations,
    class imbalance and rejections: PNG plots and a markdown summary under `reports/eda/`."""
    paths = settings.paths()
    report = run_metadata_eda(tracks, clean_tracks, rejected, settings.params(), paths.eda_reports)
    metadata: dict[str, dg.RawMetadataValue] = {
        "summary": dg.MetadataValue.md(report.summary_markdown),
        "report_dir": dg.MetadataValue.path(str(paths.eda_reports)),
        **{k: v for k, v in report.figures.items()},
    }
    for name, png in report.plots.items():
        encoded = base64.b64encode(png.read_bytes()).decode("ascii")
        metadata[f"plot_{name}"] = dg.MetadataValue.md(f"![{name}](data:image/png;base64,{encoded})")
    context.log.info(f"EDA written to {paths.eda_reports}")
    return dg.MaterializeResult(metadata=metadata)
