"""The paper's rows: every table row of LRA-diffusion (Chen et al., NeurIPS 2023, arXiv 2305.19518) this
package can reproduce, with the paper's figure, the one command that reproduces it, its inputs and
its expected GPU time. `python -m benchmarks.paper` lists, checks, runs and tabulates them.

The paper's figures are to be read from the v1 LaTeX source (PAPER below). Its tables could not be
read where this registry was written, so every cell says "unknown" except the one figure the design
notes quote from the paper (CIFAR-10, type-I 35%, CLIP: 96.54%); a cell is filled from the paper
itself, never guessed, with its source beside it. Table numbers are unknown for the same reason: rows
name their table by what it reports. The authors' NeurIPS poster gives the CIFAR-10 cells without the
PMD type (POSTER): they stand in the reference column of every type's row, not as the paper's figure.
"""
from dataclasses import dataclass
from typing import Optional

PAPER = 'arXiv 2305.19518v1 (LaTeX source)'
PAPER_LENGTH_EPOCHS = {'train_CIFAR.py': 200, 'train_Food101N.py': 100, 'train_Clothing1M.py': 300,
                       'train_WebVision.py': 300}  # the defaults: the authors' scripts (README, "paper rows")

# The authors' README command lines (puar-playground/LRA-diffusion @ 231e587), which run here as written.
AUTHORS_README_COMMANDS = (
    'python train_CIFAR.py --device cuda:0 --noise_type cifar10-1-0.35 --fp_encoder SimCLR --nepoch 200 '
    '--warmup_epochs 5',
    'python train_Food101N.py --gpu_devices 0 1 2 3 --nepoch 200 --warmup_epochs 1 --feature_dim 1024',
    'python train_Clothing1M.py --gpu_devices 0 1 2 3 --nepoch 200 --warmup_epochs 1 --feature_dim 1024',
    'python train_WebVision.py --gpu_devices 0 1 2 3 --nepoch 200 --warmup_epochs 1 --feature_dim 1024',
)


@dataclass(frozen=True)
class Figure:
    """A figure of the paper: mean (± std where it gives one), in % (or seconds), and where it was read."""
    mean: Optional[float] = None
    std: Optional[float] = None
    source: str = 'not read from the paper'

    @property
    def known(self):
        return self.mean is not None

    def text(self, unit='%'):
        if not self.known:
            return 'unknown'
        spread = f' ± {self.std:g}' if self.std is not None else ''
        return with_unit(f'{self.mean:g}{spread}', unit)


def with_unit(number, unit):
    """'96.54%' as the paper's cells print a percentage, '3.2 s' for seconds."""
    return f'{number}{"" if unit == "%" else " "}{unit}'


UNKNOWN = Figure()


@dataclass(frozen=True)
class Input:
    """What a row reads. kind: published (fetched by name and verified, utils/storage/published.py), generated
    (made by the package from a published base), cifar (torchvision downloads it), clip (the clip
    package downloads it), imagenet (torchvision's ImageNet file of a frozen diffusion-encoder backbone,
    downloaded and checked by the package), dataset (downloaded by hand: `check` names the reader that
    checks it)."""
    kind: str
    name: str
    note: str = ''
    if_asked: bool = False  # published: needed only where the dataset's reader asks for it (it lacks the file)


@dataclass(frozen=True)
class Row:
    id: str
    table: str                 # the paper's table, by what it reports (its v1 number: unknown)
    column: str                # the paper's column (and which LRA-diffusion line of it)
    paper: Figure
    script: str                # train_*.py, or a benchmarks module (python -m)
    flags: tuple
    inputs: tuple
    gpu_time: str
    metric: str = 'test_acc'   # the summary.json key measured (seconds: benchmarks.inference's)
    group: str = None          # rows measured by one run (WebVision's four columns)
    differs: str = ''          # how its inputs or protocol differ from the paper's, said in the table
    reference: str = ''        # another measurement to set beside it (the authors' code re-run)

    @property
    def run_group(self):
        return self.group or self.id

    @property
    def unit(self):
        return 's' if self.metric == 'seconds' else '%'

    def command(self):
        runner = f'python -m {self.script}' if not self.script.endswith('.py') else f'python {self.script}'
        return ' '.join([runner, *self.flags])


# ---- CIFAR-10 / CIFAR-100 ----------------------------------------------------------------------------

ENCODERS = {'simclr': ('SimCLR', ()), 'clip': ('CLIP ViT-L/14', ('--fp_encoder', 'CLIP', '--CLIP_type', 'ViT-L/14'))}
HYBRIDS = {'u30': ('_U_0.3', 'uniform 30%'), 'u60': ('_U_0.6', 'uniform 60%'), 'a30': ('_A_0.3', 'asymmetric 30%')}
GPU_TIME = {'simclr': '≈ 14 min on one H200 (4.04 s a warm epoch × 200 + features and evaluations, projected; '
                      'docs/RESULTS.md)',
            'clip': '≈ 8 min on one H200 (ViT-L/14 keys: 1.98 s a warm epoch × 200 + features and evaluations, '
                    'projected; docs/RESULTS.md)'}
# the paper's figure and an independent re-run of the authors' code (docs/REFERENCE.md)
CIFAR10_PMD1_35 = {'clip': Figure(96.54, None, 'docs/REFERENCE.md, quoting the paper; not re-read from the v1 LaTeX')}
# The authors' NeurIPS 2023 poster (puar-playground/puar-playground.github.io @ 5ceb4fe, assets/poster/LRA.pdf,
# its "Benchmark Experiment" table): CIFAR-10 only, and its columns do not say which PMD type they are, so
# these stand beside every type's row as a reference, never as the paper's figure of one type.
POSTER = {(35, None): {'simclr': '88.76 ± 0.24', 'clip': '96.54 ± 0.13'},
          (70, None): {'simclr': '42.63 ± 1.97', 'clip': '44.62 ± 0.18'},
          (35, 'u30'): {'simclr': '88.41 ± 0.37', 'clip': '95.71 ± 0.17'},
          (35, 'u60'): {'simclr': '84.43 ± 0.82', 'clip': '87.21 ± 0.71'},
          (35, 'a30'): {'simclr': '85.64 ± 0.23', 'clip': '93.65 ± 0.40'}}
POSTER_COLUMNS = {None: '{rate}% PMD', 'u30': '35% PMD + 30% U', 'u60': '35% PMD + 60% U', 'a30': '35% PMD + 30% A'}
AUTHORS_RERUN = {'simclr': "authors' code re-run, 25–31 epochs: 87.1–89.1% (docs/REFERENCE.md)",
                 'clip': "authors' code re-run, 25–31 epochs, ViT-L/14: 95.24% (docs/REFERENCE.md)"}


def poster_reference(dataset, rate, encoder, hybrid):
    """The authors' poster's cell for this row's column (CIFAR-10; PMD type not stated), or ''."""
    cell = POSTER.get((rate, hybrid), {}).get(encoder) if dataset == 'cifar10' else None
    if cell is None:
        return ''
    column = POSTER_COLUMNS[hybrid].format(rate=rate)
    return f"authors' NeurIPS 2023 poster, CIFAR-10 “{column}” (PMD type not stated): {cell}%"


def _encoder_inputs(dataset, encoder):
    if encoder == 'simclr':
        return (Input('published', f'SimCLR_128_{dataset}', "the authors' SimCLR encoder"),)
    return (Input('clip', 'ViT-L/14'),)


def _cifar_row(dataset, pmd, rate, encoder, hybrid=None):
    noise = f'{dataset}-{pmd}-{rate / 100:.2f}' + (HYBRIDS[hybrid][0] if hybrid else '')
    name, fp_flags = ENCODERS[encoder]
    base = f'{dataset}-{pmd}-{rate / 100:.2f}'
    published = pmd == 1 or not hybrid   # the authors published type-I hybrids; PLC types II/III without
    inputs = (Input('cifar', dataset),
              Input('published', noise) if published else
              Input('generated', noise, f'{HYBRIDS[hybrid][1]} drawn over the published {base} (--noise_seed)'),
              *_encoder_inputs(dataset, encoder))
    title = {10: 'CIFAR-10', 100: 'CIFAR-100'}[int(dataset[5:])]
    kind = ['I', 'II', 'III'][pmd - 1]
    column = f'{title}, type-{kind} {rate}%' + (f' + {HYBRIDS[hybrid][1]}' if hybrid else '')
    row_id = f'{dataset}-pmd{pmd}-{rate}' + (f'-{hybrid}' if hybrid else '') + f'-{encoder}'
    first = dataset == 'cifar10' and pmd == 1 and rate == 35 and not hybrid
    return Row(row_id, 'hybrid noise (PMD + i.i.d.)' if hybrid else 'PMD noise', f'{column}; LRA-diffusion ({name})',
               CIFAR10_PMD1_35.get(encoder, UNKNOWN) if first else UNKNOWN, 'train_CIFAR.py',
               ('--noise_type', noise, *fp_flags), inputs, GPU_TIME[encoder],
               differs='' if published else f"the paper's {noise} file is unpublished: this one is drawn here",
               reference='; '.join(r for r in (AUTHORS_RERUN[encoder] if first else '',
                                               poster_reference(dataset, rate, encoder, hybrid)) if r))


def cifar_rows():
    rows = []
    for dataset in ('cifar10', 'cifar100'):
        for pmd in (1, 2, 3):
            for rate in (35, 70):
                rows += [_cifar_row(dataset, pmd, rate, e) for e in ENCODERS]
        for pmd in (1, 2, 3):
            for hybrid in HYBRIDS:
                rows += [_cifar_row(dataset, pmd, 35, e, hybrid) for e in ENCODERS]
    return rows


# ---- Food-101N, Clothing1M, WebVision ---------------------------------------------------------------------

CLIP_L14 = Input('clip', 'ViT-L/14')
# the frozen ResNet-50 of these scripts' diffusion encoder (--diff_encoder resnet50_l)
RESNET50 = Input('imagenet', 'resnet50', 'the diffusion encoder\'s frozen backbone (--diff_encoder resnet50_l)')


def real_world_rows():
    food = Row('food101n', 'real-world noise', 'Food-101N; LRA-diffusion (CLIP ViT-L/14)', UNKNOWN, 'train_Food101N.py',
               ('--food101n_root', 'data/Food-101N_release', '--food101_root', 'data/food-101'),
               (Input('dataset', 'Food-101N', 'Food-101N_release/ (download by hand)'),
                Input('dataset', 'Food-101', 'food-101/ (its test split; download by hand)'), CLIP_L14, RESNET50),
               'not measured (310k training images decoded every epoch, 100 epochs)',
               differs="model selected on verified_val (the authors' script selected on the test split)")
    clothing = Row('clothing1m', 'real-world noise', 'Clothing1M; LRA-diffusion (CC)', UNKNOWN, 'train_Clothing1M.py',
                   ('--clothing1m_root', 'data/Clothing1M'),
                   (Input('dataset', 'Clothing1M', 'Clothing1M/ with its annotation files (download by hand)'),
                    Input('published', 'CC_net', "the authors' Clothing1M classifier (f_p)"),
                    Input('published', 'cc_select_img'), Input('published', 'cc_select_label'), RESNET50),
                   '≈ 12 h on one H100 (one epoch of generated JPEGs projected to 300; docs/RESULTS.md)')
    web_inputs = (Input('dataset', 'WebVision', 'WebVision 1.0 (Google subset) with info/ (download by hand)'),
                  Input('dataset', 'ILSVRC2012 val', 'the official flat validation folder (download by hand)'),
                  Input('published', 'ILSVRC2012_val_label', 'its labels, where no label file lies beside it',
                        if_asked=True),
                  CLIP_L14, RESNET50)
    web_flags = ('--webvision_root', 'data/webvision', '--imagenet_val_root', 'data/ILSVRC2012/val')
    web = []
    for test, where in (('val', 'WebVision val'), ('ilsvrc', 'ILSVRC2012 val')):
        for top in (1, 5):
            metric = {('val', 1): 'best_val_acc', ('val', 5): 'best_val_top5', ('ilsvrc', 1): 'test_acc',
                      ('ilsvrc', 5): 'test_top5_acc'}[test, top]
            web.append(Row(f'webvision-{test}-top{top}', 'WebVision (first 50 classes)',
                           f'{where}, top-{top}; LRA-diffusion (CLIP ViT-L/14)', UNKNOWN, 'train_WebVision.py',
                           web_flags, web_inputs, 'not measured (≈ 2 h on one H100 by the Clothing1M epoch rate)',
                           metric=metric, group='webvision',
                           differs='the model is selected on WebVision val, so its own figure is the best of the '
                                   'evaluations' if test == 'val' else ''))
    return [food, clothing, *web]


# ---- inference time -----------------------------------------------------------------------------------

def inference_rows():
    from benchmarks.common import AUTHORS_H100
    rows = []
    for size in (10000, 50000):
        for column in ('Standard', 'SimCLR', 'ViT-B/32', 'ViT-B/16', 'ViT-L/14'):
            theirs = AUTHORS_H100['inference_s'][size][column]
            rows.append(Row(f'inference-{size // 1000}k-{column.lower().replace("/", "").replace("-", "")}',
                            'inference time', f'{size:,} images, {column}', UNKNOWN, 'benchmarks.inference',
                            ('--columns', column, '--sizes', str(size)), (), 'under a minute',
                            metric='seconds', reference=f"authors' code, one H100: {theirs} s (docs/REFERENCE.md)"))
    return rows


# ---- ablations ----------------------------------------------------------------------------------------

ABLATION_BASE = ('--noise_type', 'cifar10-1-0.35')
ABLATION_INPUTS = (Input('cifar', 'cifar10'), Input('published', 'cifar10-1-0.35'),
                   Input('published', 'SimCLR_128_cifar10', "the authors' SimCLR encoder"))
ABLATIONS = (  # id, the paper's ablation, flags on CIFAR-10 type-I 35% (SimCLR unless the ablation is f_p)
    *((f'ablation-k{k}', f'k = {k}', ('--k', str(k))) for k in (1, 5, 20, 50, 100)),
    *((f'ablation-fp-{name.lower().replace("/", "")}', f'f_p CLIP {name}', ('--fp_encoder', 'CLIP', '--CLIP_type', name))
      for name in ('ViT-B/32', 'ViT-B/16')),
    *((f'ablation-ddim{n}', f'{n} DDIM steps', ('--ddim_n_step', str(n))) for n in (1, 5, 20, 50)),
    ('ablation-no-retrieval', 'without label retrieval (own noisy label)', ('--candidates', 'own')),
    ('ablation-no-fp-conditioning', 'without the f_p conditioning', ('--no-fp_conditioning',)),
)


def ablation_rows():
    rows = []
    for row_id, what, flags in ABLATIONS:
        clip = '--fp_encoder' in flags
        inputs = ABLATION_INPUTS[:2] + ((Input('clip', flags[-1]),) if clip else ABLATION_INPUTS[2:])
        rows.append(Row(row_id, 'ablations', f'{what}; CIFAR-10, type-I 35% (the paper\'s setting: unknown)',
                        UNKNOWN, 'train_CIFAR.py', ABLATION_BASE + flags, inputs,
                        GPU_TIME['clip' if clip else 'simclr']))
    return rows


ROWS = {row.id: row for row in (*cifar_rows(), *real_world_rows(), *inference_rows(), *ablation_rows())}
TABLES = tuple(dict.fromkeys(row.table for row in ROWS.values()))  # in the paper's order of topics
