"""The paper's schemes as plans: which models to train, on which domains, with which parts.

A scheme expands into one or more :class:`ModelPlan`. The same network code builds them all;
only the switches below differ, so a comparison changes one word in the config.

=============  ==========================================================================
individual     one network per dataset (plain BN, one head)
transfer       per target dataset: pre-train on the other datasets (shared), then fine-tune
shared         one network over all datasets, nothing domain-specific, one union head
mtmd           shared convolutions + domain-specific BN + one head per dataset
mtmd+con       mtmd + multi-scale supervised contrastive regularization
full           mtmd+con + the multi-joint shape prior
=============  ==========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from jointseg.config import SCHEMES


@dataclass(frozen=True)
class ModelPlan:
    """One network to train."""

    name: str
    domains: tuple[str, ...]
    label_space: str = "local"  # "local": one head per domain; "union": one head, union labels
    domain_specific_bn: bool = False
    contrastive: bool = False
    shape_prior: bool = False
    init_from: str | None = None  # plan whose trained weights initialize this one (transfer)
    trainable: bool = True
    epochs_key: str = "epochs"  # "epochs" or "transfer_pretrain_epochs"
    extra: dict = field(default_factory=dict)


def plan_epochs(training, plan: ModelPlan) -> int:
    """The epoch cap of ``plan`` under ``training`` (a ``TrainingConfig``): ``epochs``, or
    ``transfer_pretrain_epochs`` for a transfer pre-training where it is set."""
    if plan.epochs_key == "transfer_pretrain_epochs" and training.transfer_pretrain_epochs:
        return training.transfer_pretrain_epochs
    return training.epochs


def plan_scheme(scheme: str, domains: list[str]) -> list[ModelPlan]:
    """Expand ``scheme`` over ``domains`` into the ordered list of networks to train."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    all_domains = tuple(domains)
    if scheme == "individual":
        return [ModelPlan(name=d, domains=(d,)) for d in domains]
    if scheme == "shared":
        return [ModelPlan(name="shared", domains=all_domains, label_space="union")]
    if scheme == "transfer":
        if len(domains) < 2:
            raise ValueError("the transfer scheme needs at least two datasets")
        plans: list[ModelPlan] = []
        for target in domains:
            others = tuple(d for d in domains if d != target)
            pretrain = ModelPlan(
                name=f"pretrain_for_{target}",
                domains=others,
                label_space="union",
                epochs_key="transfer_pretrain_epochs",
            )
            plans += [pretrain, ModelPlan(name=target, domains=(target,), init_from=pretrain.name)]
        return plans
    mtmd = ModelPlan(name="main", domains=all_domains, domain_specific_bn=True)
    if scheme == "mtmd":
        return [mtmd]
    if scheme == "mtmd+con":
        return [replace(mtmd, contrastive=True)]
    return [replace(mtmd, contrastive=True, shape_prior=True)]


def deliverable_plans(plans: list[ModelPlan]) -> list[ModelPlan]:
    """The plans whose models a run ships (transfer pre-training models are intermediate)."""
    return [p for p in plans if not p.name.startswith("pretrain_for_")]
