"""What ``train_interpreter.py`` does: which step its options ask for, and where that step reads and writes by default.

The steps: train the ensemble of pixel classifiers (the default), cross-validate it over the annotated samples
(``cross_validate``), generate an annotated dataset with it (``generate_data``), re-run only the uncertainty filter on
generated samples (``filter_only``), or score generated masks against reference masks (``eval_masks``).
"""

import os

import dnnlib
from interpreter import config, crossval, generate, train
from torch_utils import distributed, misc
from training.legacy import CheckpointError

# What the command line reports as one `error: ...` line (exit code 2; a failed rank: the job ends with its exit
# code). FileError covers the sample lists and the masks read by --eval_masks.
USER_ERRORS = (config.ConfigError, train.AnnotationSetError, CheckpointError, misc.DeviceError, dnnlib.util.FileError,
               distributed.DistributedError, distributed.RankFailed)


def config_overrides(exp_dir=None, seed=None, uncertainty_portion=None):
    """The config keys the command line replaces (options left out replace nothing)."""
    values = dict(exp_dir=exp_dir, seed=seed, uncertainty_portion=uncertainty_portion)
    return {k: v for k, v in values.items() if v is not None}


def samples_dir(cfg, resume=None, out=None):
    """Where generated samples go and are read from: ``out``, else ``samples/`` in ``resume`` (the folder with
    ``models/``), else in the experiment folder."""
    return out or os.path.join(resume or cfg.exp_dir, 'samples')


def run(exp, exp_dir=None, generate_data=False, resume=None, num_sample=1000, start_step=0, out=None, seed=None,
        device=None, gpus=None, dist_timeout=distributed.DEFAULT_TIMEOUT_S, dense=False, stop_rule='original',
        uncertainty_portion=None, filter_only=False, cross_validate=False, folds=None, cv_models=None,
        eval_masks=None, class_names=None, log=print):
    """Run the step ``train_interpreter.py``'s options ask for (see the module docstring; the arguments are its
    options). Raises one of ``USER_ERRORS`` for bad input."""
    overrides = config_overrides(exp_dir, seed, uncertainty_portion)
    if eval_masks:
        cfg = config.load_config(exp, overrides=overrides, check_files=False)
        crossval.eval_masks(samples_dir(cfg, resume, out), eval_masks, num_classes=cfg.number_class,
                            class_names=class_names, log=log)
        return
    generating = generate_data or filter_only
    # Generation needs the generator and the models, not the annotation files.
    cfg = config.load_config(exp, overrides=overrides, check_files=['stylegan_checkpoint'] if generating else True)
    if cross_validate:
        crossval.cross_validate(cfg, folds=folds, device=device, stop_rule=stop_rule, model_num=cv_models,
                                class_names=class_names, log=log)
    elif generating:
        resume = resume or cfg.exp_dir
        out = samples_dir(cfg, resume, out)
        if not filter_only:
            generate.generate_on_ranks(cfg, resume, num_sample, start_step=start_step, out_dir=out, device=device,
                                       fast=not dense, gpus=gpus, timeout_s=dist_timeout)
        elif cfg.uncertainty_portion > 0:
            kept, rejected = generate.filter_by_uncertainty(out, cfg.uncertainty_portion)
            log(f'{kept} samples kept, {rejected} most uncertain listed in {out}/rejected.jsonl')
    else:
        paths = train.train_ensemble(cfg, device=device, stop_rule=stop_rule)
        log(f'{len(paths)} classifiers in {os.path.dirname(paths[0])}')
