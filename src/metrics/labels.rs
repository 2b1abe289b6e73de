//! The label sets of the metric families: one struct per combination of labels, encoded
//! by `prometheus_client` in field order (`job` first).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct JobLabels {
    pub(super) job: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct TenantLabels {
    pub(super) job: Arc<str>,
    pub(super) tenant: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RowLabels {
    pub(super) job: Arc<str>,
    pub(super) tenant: Arc<str>,
    pub(super) op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct SinkLabels {
    pub(super) job: Arc<str>,
    pub(super) sink: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct SideLabels {
    pub(super) job: Arc<str>,
    pub(super) side: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct PlaceLabels {
    pub(super) job: Arc<str>,
    pub(super) place: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct StageLabels {
    pub(super) job: Arc<str>,
    pub(super) sink: &'static str,
    pub(super) stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct PredictorLabels {
    pub(super) job: Arc<str>,
    pub(super) predictor: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct StateLabels {
    pub(super) job: Arc<str>,
    pub(super) state: &'static str,
}
