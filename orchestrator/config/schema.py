"""The typed schema: the one definition of every config key.

The YAML files under ``conf/`` only pick options and override values; Hydra merges them
into these dataclasses, so a wrong type (``optim.lr=abc``) or an unknown key is refused
during composition, and ``OmegaConf.to_object`` turns the result into real instances.
Cross-field and range checks live in ``config/validate.py``. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Offload(str, Enum):
    none = "none"
    cpu = "cpu"
    nvme = "nvme"


class Arch(str, Enum):
    gpt2 = "gpt2"
    llama = "llama"
    bert = "bert"


class ActivationCheckpointing(str, Enum):
    none = "none"
    full = "full"
    every_n = "every_n"


class AttnImplementation(str, Enum):
    sdpa = "sdpa"
    eager = "eager"
    flash_attention_2 = "flash_attention_2"


class WandbMode(str, Enum):
    online = "online"
    offline = "offline"
    disabled = "disabled"


class TokenizeOn(str, Enum):
    local = "local"
    ray = "ray"


class TaskName(str, Enum):
    clm = "clm"
    sft = "sft"
    classify = "classify"
    distill = "distill"
    dpo = "dpo"


class DistillLoss(str, Enum):
    forward_kl = "forward_kl"
    reverse_kl = "reverse_kl"
    jsd = "jsd"


class DpoLoss(str, Enum):
    sigmoid = "sigmoid"
    ipo = "ipo"


class DistillInit(str, Enum):
    none = "none"
    teacher_layers = "teacher_layers"


class DistillData(str, Enum):
    clm = "clm"
    sft = "sft"


class PeftMethod(str, Enum):
    none = "none"
    lora = "lora"
    dora = "dora"
    qlora = "qlora"


class ClassWeights(str, Enum):
    none = "none"
    auto = "auto"


class Truncation(str, Enum):
    truncate = "truncate"
    drop = "drop"


class DataFormat(str, Enum):
    auto = "auto"
    text = "text"
    json = "json"
    parquet = "parquet"


class Backend(str, Enum):
    local = "local"
    ray = "ray"
    slurm = "slurm"
    k8s = "k8s"


class HardwarePreset(str, Enum):
    auto = "auto"
    h100_sxm = "h100_sxm"
    h200 = "h200"
    a100_80g = "a100_80g"
    a100_40g = "a100_40g"
    cpu = "cpu"


@dataclass
class SlurmConfig:
    """What `orchestrator submit cluster=slurm` writes into the sbatch script's header and setup."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str = "04:00:00"
    """Wall-clock limit (sbatch --time). The preemption notice arrives preempt_signal_s before it."""
    mem: str | None = None
    """Memory per node (sbatch --mem, e.g. 200G; 0 = all of it). null = the partition's default."""
    constraint: str | None = None
    cpus_per_task: int | None = None
    """CPUs per node for Ray (one task per node). null = workers per node x cluster.cpus_per_worker."""
    extra_directives: list[str] = field(default_factory=list)
    """More `#SBATCH` options, e.g. ['--exclusive', '--mail-type=END']."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run on the first node before anything else: modules, a venv, a container wrapper."""
    python: str | None = None
    """Interpreter that runs the driver on the cluster. null = the one running `orchestrator submit`."""
    preempt_signal_s: int = 120
    """Slurm sends USR1 this many seconds before the time limit (or on preemption); the job checkpoints
    and requeues itself. 0 = no notice."""
    ray_port: int = 6379


@dataclass
class K8sConfig:
    """What `orchestrator submit cluster=k8s` writes into the KubeRay RayJob manifest."""

    namespace: str = "default"
    image: str = "orchestrator:latest"
    """Worker image (docker/build.sh builds it); the same image runs the head and the workers."""
    ray_version: str = "2.60.0"
    shared_volume_claim: str = "orchestrator-shared"
    """PersistentVolumeClaim (ReadWriteMany) mounted on every pod: run directories and the data cache."""
    mount_path: str = "/mnt/shared"
    wandb_secret: str = "wandb"
    """Kubernetes Secret whose key `api-key` becomes WANDB_API_KEY (optional: offline runs need none)."""
    cpus_per_node: int | None = None
    """CPU request of each worker pod. null = workers per node x cluster.cpus_per_worker."""
    backoff_limit: int = 2
    """Whole-job retries by KubeRay after the job fails (each resumes from the newest checkpoint)."""
    ttl_seconds_after_finished: int = 3600


@dataclass
class ClusterConfig:
    name: Backend = Backend.local
    """Backend: `local` starts an embedded Ray cluster inside the driver process; `ray` joins a running
    Ray cluster; `slurm` and `k8s` are submitted with `orchestrator submit` (docs/clusters.md)."""
    num_workers: int = 2
    """Ray Train workers (ranks) on `local` and `ray`. World size = num_workers there."""
    cpus_per_worker: int = 1
    """CPUs reserved per worker; also the worker's torch/OMP thread count."""
    gpus_per_worker: int | None = None
    """GPUs per worker (local, ray). null on `local` = 1 when Ray sees at least num_workers GPUs,
    else 0 (CPU + gloo); `ray` needs a number."""
    nodes: int = 1
    """Machines in the allocation (slurm, k8s). World size = nodes x workers per node there."""
    gpus_per_node: int = 0
    """GPUs per machine (slurm, k8s); one worker per GPU. 0 = CPU workers."""
    workers_per_node: int | None = None
    """Workers per machine (slurm, k8s). null = gpus_per_node, or 1 on CPU machines."""
    gpu_memory_gb: float | None = None
    """Memory of one GPU in GB (1e9 bytes), for the plan's fit check. null = not checked."""
    cpu_memory_gb: float | None = None
    """Memory of one machine in GB, for the plan's fit check. null = this machine's (local), else not checked."""
    address: str = "auto"
    """Ray cluster the driver joins (ray, slurm, k8s): host:port of its head (GCS, default port 6379),
    or auto = RAY_ADDRESS, else the cluster `ray start` started on this machine."""
    dashboard_url: str | None = None
    """Ray's Job Submission endpoint for `submit/status/logs/stop` (ray). null = RAY_ADDRESS when it
    is an http(s) URL, else http://<host of address>:8265."""
    join_timeout_s: int = 300
    """How long the driver waits for all cluster.nodes machines to join the Ray cluster (slurm, k8s)."""
    hardware: HardwarePreset = HardwarePreset.auto
    """The machine the plan's step time, checkpoint and failure figures assume (orchestrator/hardware.py):
    h100_sxm, h200, a100_80g, a100_40g or cpu. auto = cpu without GPUs, else h100_sxm (said in the plan).
    The keys below override single figures of the preset; null = the preset's."""
    peak_tflops_bf16: float | None = None
    """Dense (not 2:4-sparse) peak TFLOP/s of one device in bf16."""
    peak_tflops_fp16: float | None = None
    peak_tflops_fp32: float | None = None
    intra_node_gbps: float | None = None
    """GB/s one device sends (and receives) to the others of its machine (NVLink: 450 on H100, 300 on A100)."""
    inter_node_gbps: float | None = None
    """GB/s one device sends (and receives) to other machines (its share of the network: 50 for 400 Gb/s)."""
    storage_write_gbps: float | None = None
    """GB/s one machine writes to the checkpoint storage."""
    storage_read_gbps: float | None = None
    """GB/s one machine reads from the checkpoint storage."""
    restart_s: float | None = None
    """Seconds from an interruption until training resumes, before the checkpoint loads (rescheduling,
    process start, collective setup)."""
    device_mtbf_hours: float | None = None
    """Mean hours between interruptions per device. null = 50,677: Llama 3 (Dubey et al. 2024, section 3.3.4)
    had 419 unexpected interruptions in 54 days on 16,384 H100s, one every 3.09 h, every cause counted."""
    device_hour_cost: float | None = None
    """Price of one device-hour; when set, the plan prints the run's expected cost."""
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    k8s: K8sConfig = field(default_factory=K8sConfig)


@dataclass
class ModelConfig:
    name: str = "tiny"
    arch: Arch = Arch.gpt2
    """Model family; picks the transformers config class (GPT2Config, LlamaConfig; BertConfig, an encoder, for
    task=classify)."""
    num_layers: int = 2
    hidden_size: int = 128
    num_heads: int = 4
    num_kv_heads: int | None = None
    """Key/value heads for grouped-query attention (llama). null = num_heads."""
    intermediate_size: int | None = None
    """MLP width. null = 4 x hidden_size."""
    vocab_size: int | None = None
    """Embedding rows. null = the tokenizer's vocabulary size."""
    max_position_embeddings: int | None = None
    """Longest sequence the model supports. null = train.seq_len."""
    dropout: float = 0.0
    tie_word_embeddings: bool = True
    pretrained_path: str | None = None
    """Local Hugging Face checkpoint directory; when set, shapes above are ignored."""
    attn_implementation: AttnImplementation = AttnImplementation.sdpa
    """Attention kernel: sdpa (torch's scaled_dot_product_attention: flash or memory-efficient kernels on
    GPUs), eager (the reference Python implementation), flash_attention_2 (needs the flash-attn package)."""


@dataclass
class SourceConfig:
    """One dataset of a mixture (data.sources)."""

    path: str = "???"
    """Local file, directory or glob, as data.path."""
    weight: float = 1.0
    """Share of training blocks drawn from this source (the weights are normalized to sum to 1)."""
    text_field: str = "text"
    """Column holding the text in JSON/Parquet files."""


@dataclass
class DataConfig:
    name: str = "stdlib"
    path: str | None = None
    """Local file, directory or glob of .txt/.md/.jsonl/.json/.parquet files.
    null = the Python standard library's source, present on every machine."""
    streaming: bool = False
    """Read data.path's documents as training goes (datasets' streaming mode), tokenizing and packing them in
    each rank; only the head of the stream is prepared (the tokenizer, the validation blocks)."""
    sources: list[SourceConfig] | None = None
    """A weighted mixture instead of data.path: [{path: a.jsonl, weight: 0.75}, {path: b/, weight: 0.25}].
    Blocks are drawn from the sources with these weights, deterministically from train.seed."""
    format: DataFormat = DataFormat.auto
    """How to read `path`; auto decides from the file extension."""
    text_field: str = "text"
    """Column holding the text in JSON/Parquet files."""
    max_bytes: int | None = 8_000_000
    """Read whole files, in sorted order, until this many bytes are read. null = all files."""
    tokenizer_path: str | None = None
    """Local tokenizer directory (AutoTokenizer). null = train a byte-level BPE on the corpus."""
    vocab_size: int = 4096
    """Vocabulary of the locally trained tokenizer (ignored with tokenizer_path)."""
    val_fraction: float = 0.05
    """Share of packed blocks held out for validation."""
    cache_dir: str = "${oc.env:ORCHESTRATOR_CACHE,${oc.env:HOME}/.cache/orchestrator}"
    """Where tokenizers and tokenized datasets are cached between runs."""
    num_proc: int | None = None
    """Processes that tokenize. null = every core this process may use."""
    tokenize_on: TokenizeOn = TokenizeOn.local
    """local: data.num_proc processes on the driver's machine. ray: tasks on every node of the Ray cluster the
    driver joined (cluster=ray, slurm or k8s), for corpora one machine would take too long to tokenize."""
    val_path: str | None = None
    """task=sft, classify: a validation file. null = data.val_fraction of the samples held out by train.seed
    (stratified by label for classify)."""
    chat_template: str | None = None
    """task=sft: the chat template samples are rendered with. null = the tokenizer's own; a built-in name
    (chatml) or a Jinja file's path for a base model that has none. Saved with the trained model."""
    packing: bool = True
    """task=sft: pack samples into train.seq_len rows (positions restart at each sample, attention never
    crosses one); false = one sample a row, padded to the batch's longest."""
    truncation: Truncation = Truncation.truncate
    """task=sft: a sample longer than train.seq_len is cut to it (truncate) or left out (drop); the count is
    printed."""
    text_pair_field: str | None = None
    """task=classify: a second text column for sentence-pair tasks (entailment, paraphrase). null = one text."""
    label_field: str = "label"
    """task=classify: the column holding each row's label (strings or integers)."""
    test_path: str | None = None
    """task=classify: a test file, evaluated once with the final model (summary.json's test_* figures)."""


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-3
    """Peak learning rate, reached after warmup_steps."""
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    warmup_steps: int = 10
    """Linear warmup from 0 to lr over this many optimizer steps."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr x min_lr_ratio at train.max_steps."""


@dataclass
class ZeroConfig:
    stage: int = 2
    """DeepSpeed ZeRO stage: 0 (plain data parallel), 1 (optimizer states), 2 (+gradients),
    3 (+parameters) are sharded across ranks."""
    auto: bool = False
    """Let the plan pick stage, offload, activation checkpointing and micro-batch: the least
    communication that fits the cluster's memory (zero=auto)."""
    offload_optimizer: Offload = Offload.none
    """Keep optimizer states (and the step) in CPU memory or on NVMe. Needs stage >= 1."""
    offload_param: Offload = Offload.none
    """Keep parameters in CPU memory or on NVMe. Needs stage 3."""
    nvme_path: str | None = None
    """Folder on a local NVMe drive for nvme offload (needs DeepSpeed's async_io op: libaio + CUDA)."""
    reduce_bucket_size: int | None = None
    """Elements per gradient reduce bucket. null = hidden_size^2 (as the HF integration's "auto");
    DeepSpeed's own 5e8 default costs GBs per rank."""
    allgather_bucket_size: int | None = None
    """Elements per parameter all-gather bucket (stages 1-2). null = hidden_size^2."""
    prefetch_bucket_size: int | None = None
    """Stage 3: elements prefetched ahead of use. null = 0.9 x hidden_size^2."""
    param_persistence_threshold: int | None = None
    """Stage 3: parameters smaller than this stay whole on every rank. null = 10 x hidden_size."""
    max_live_parameters: int = 1_000_000_000
    """Stage 3: most parameters gathered at once before older ones are released."""
    overlap_comm: bool = False
    """Overlap gradient reduction with the backward pass (faster on GPUs, more buffer memory)."""


@dataclass
class LoggerConfig:
    name: str = "wandb"
    mode: WandbMode = WandbMode.offline
    """online needs an account (WANDB_API_KEY); offline writes <run_dir>/wandb for `wandb sync`."""
    project: str = "orchestrator"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    job_type: str | None = None
    """W&B job type (a sweep sets `trial`)."""
    run_id: str | None = None
    """W&B run id of a new run directory; null = a random one. Kept in <run_dir>/run.json across reruns."""


@dataclass
class TrainConfig:
    seed: int = 0
    max_steps: int = 200
    """Optimizer steps (with train.epochs: set from it)."""
    epochs: float | None = None
    """Passes over the training rows instead of max_steps (fine-tuning): max_steps = ceil(epochs x train rows /
    global batch), printed before training. null = train.max_steps as given."""
    micro_batch_size: int = 8
    """Sequences per worker per forward pass."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step. Global batch = micro x accum x workers."""
    seq_len: int = 128
    """Tokens per sequence (packed blocks)."""
    precision: Precision = Precision.auto
    """auto = bf16 where the workers have GPUs, fp32 on CPU."""
    activation_checkpointing: ActivationCheckpointing = ActivationCheckpointing.none
    """Recompute activations in the backward pass to save memory: none, full (every layer),
    or every_n (layers 0, n, 2n, ...; n = activation_checkpointing_every)."""
    activation_checkpointing_every: int = 2
    compile: bool = False
    """torch.compile the model (through DeepSpeed's engine.compile). Compiling happens during the first
    step: the start-up breakdown reports it as `compile_s`, and the steady tokens/s leaves it out."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    log_every: int = 10
    eval_every: int = 50
    """Steps between validation passes; the last step is always evaluated. 0 = only at the end."""
    eval_batches: int = 8
    """Micro-batches per rank in one validation pass (task=classify evaluates every validation row)."""
    class_weights: ClassWeights = ClassWeights.none
    """task=classify: auto weights the loss by inverse class frequency in the training rows (imbalanced data)."""
    ckpt_every: int = 100
    """Steps between checkpoints; the last step is always saved. 0 = only at the end."""
    keep_checkpoints: int = 3
    """Complete checkpoints kept; older ones are deleted (the newest complete one never is)."""
    resume: str = "auto"
    """auto: continue from the newest complete checkpoint in run_dir (rerun the same command);
    never: refuse a run_dir that already holds a run; or a checkpoint folder to start from."""
    trust_checkpoint: bool = False
    """Accept train.resume=<folder> that carries no manifest of hashes (a universal checkpoint converted by
    hand with ds_to_universal): its pickle files are read unverified once, and its hashes recorded then, so
    every later resume checks them. Without it such a folder is refused."""
    max_failures: int = 1
    """Worker-group restarts (Ray Train FailureConfig) before the job fails; each resumes from
    the newest complete checkpoint."""
    collective_timeout_s: int = 600
    """Seconds a rank may go without progress (a step, an eval batch, a checkpoint write, or one setup stage)
    before the watchdog ends it as stuck and names it; then train.max_failures applies. Raise it for
    setups or checkpoint writes that legitimately take longer."""


class PlanFormat(str, Enum):
    text = "text"
    json = "json"


@dataclass
class PlanConfig:
    format: PlanFormat = PlanFormat.text
    """How `orchestrator plan` prints the plan: a readable table or one JSON object."""
    force: bool = False
    """Train even when the plan predicts the job will not fit in memory."""
    assumed_mfu: float = 0.40
    """Share of the devices' peak FLOP/s the computation reaches (model FLOPs, as runs report MFU), for the
    plan's step time. `orchestrator plan --calibrate RUN_DIR` uses the run's measured figure instead."""


@dataclass
class SubmitConfig:
    dry_run: bool = False
    """Render the launch artifact into the run directory and print it; submit nothing."""
    follow: bool = True
    """cluster=ray: stream the job's logs until it ends and exit with its exit code."""


class SearchAlgorithm(str, Enum):
    grid = "grid"
    random = "random"
    optuna = "optuna"


class SweepScheduler(str, Enum):
    none = "none"
    asha = "asha"


class MetricMode(str, Enum):
    min = "min"
    max = "max"


@dataclass
class AshaConfig:
    grace_steps: int = 20
    """Training steps every trial runs before ASHA may stop it."""
    reduction_factor: int = 3
    """Only the best 1/reduction_factor of the trials at a rung go on to the next."""


@dataclass
class SweepConfig:
    """`orchestrator sweep`: every trial is a whole training run in <dir>/trials/<trial>/."""

    name: str = "sweep"
    """W&B group of the trials, and the default folder's name."""
    dir: str | None = None
    """The sweep's folder; null = sweeps/<name>-<timestamp>. Rerunning with the same dir resumes it."""
    params: dict[str, str] = field(default_factory=dict)
    """Config key -> Hydra sweep expression: `choice(1,2)`, `1,2`, `range(0,30,10)`, `interval(1e-4,1e-2)`,
    `tag(log,interval(1e-4,1e-2))`. Sweep expressions on the command line are added here."""
    algorithm: SearchAlgorithm = SearchAlgorithm.grid
    """grid: every combination of choice/range values; random; optuna: Tree-structured Parzen Estimator."""
    scheduler: SweepScheduler = SweepScheduler.none
    """asha: stop poor trials early (Async Successive Halving), judged at evaluation steps."""
    asha: AshaConfig = field(default_factory=AshaConfig)
    metric: str = "val_loss"
    """What trials are ranked by (reported at every evaluation): val_loss, val_ppl or loss; a classifier's
    val_accuracy or val_macro_f1; DPO's val_preference_accuracy or val_reward_margin (with sweep.mode=max)."""
    mode: MetricMode = MetricMode.min
    num_trials: int | None = None
    """Trials to run (random, optuna); must be null for grid, which runs every combination."""
    max_concurrent: int | None = None
    """Most trials at once; null = as many as the cluster holds."""
    seed: int = 0
    """Seeds the search algorithm (the trials' own seed is train.seed)."""
    trial_id: str | None = None
    """Set by the sweep in each trial's config: which trial this run is."""
    trial_overrides: dict[str, str] = field(default_factory=dict)
    """Set by the sweep in each trial's config: the values this trial tries."""


class PassName(str, Enum):
    magnitude = "magnitude"
    wanda = "wanda"
    semi_structured = "semi_structured"
    int8_weight = "int8_weight"
    int8_dynamic = "int8_dynamic"
    int4_weight = "int4_weight"
    gradual_magnitude = "gradual_magnitude"
    qat = "qat"
    mlp_channels = "mlp_channels"
    distill = "distill"
    keep_sparsity = "keep_sparsity"


class SparsityScore(str, Enum):
    magnitude = "magnitude"
    wanda = "wanda"


@dataclass
class PassConfig:
    """One compression pass. Each pass reads only the keys its name uses (docs/compression.md)."""

    name: PassName = PassName.magnitude
    """magnitude, wanda, semi_structured (2:4): pruning after training; int8_weight, int8_dynamic,
    int4_weight: torchao quantization after training; gradual_magnitude: pruning while training;
    qat: quantization-aware training (fake-quantized while training, converted at the end);
    mlp_channels: structured pruning after training (whole MLP channels removed, layers shrunk); distill:
    recovery after pruning, the pruned model trained as the student of the run's model (task=distill) with its
    zeros kept; keep_sparsity: while training, the zero weights of a pruned model stay zero."""
    sparsity: float = 0.5
    """magnitude, wanda, gradual_magnitude: share of the prunable weights set to zero (the final share
    for gradual_magnitude). semi_structured is always 2 of every 4. mlp_channels: share of each block's
    MLP channels removed (the kept count is rounded down to a multiple of 32)."""
    global_ranking: bool = True
    """magnitude, gradual_magnitude: rank weights across all prunable layers (true) or within each layer."""
    score: SparsityScore = SparsityScore.magnitude
    """semi_structured: which 2 of every 4 weights go: the smallest |w| (magnitude) or |w| x input norm (wanda)."""
    calibration_batches: int = 8
    """wanda, semi_structured with score=wanda: training-split batches of train.micro_batch_size
    whose activations weigh the weights."""
    lm_head: bool = False
    """int8_weight, int8_dynamic, int4_weight: quantize the output head too (needs an untied head)."""
    group_size: int = 32
    """int4_weight, qat with bits=4: weights per quantization group along the input features (32, 64, 128
    or 256)."""
    bits: int = 8
    """qat: 8 (int8 weights per output row, int8 activations per token) or 4 (int4 weights in groups of
    group_size, stored one per byte)."""
    start_step: int | None = None
    """gradual_magnitude: the step of the first prune; sparsity then rises on a cubic schedule. null = 3/5 of
    train.max_steps: the dense model learns first, and pruning then costs less than when it starts at step 0."""
    end_step: int | None = None
    """gradual_magnitude: the step where sparsity reaches its final value. null = 5/6 of train.max_steps, so the
    last sixth of training recovers from the final prune."""
    update_every: int = 5
    """gradual_magnitude: steps between mask updates."""
    steps: int = 100
    """distill: training steps of the recovery (of the run's train.micro_batch_size, grad_accum and workers)."""
    lr: float | None = None
    """distill: the recovery's peak learning rate. null = a tenth of the run's optim.lr (the model is trained
    already: it is nudged back, not trained again)."""


@dataclass
class CompressConfig:
    """Compression: `orchestrator compress run_dir=... compress=<pipeline>` or `train compress=<pipeline>`."""

    name: str = "none"
    """The pipeline's name: its results go to <run_dir>/compressed/<name>/."""
    passes: list[PassConfig] = field(default_factory=list)
    """Applied in order. Empty = no compression."""
    max_ppl_increase: float | None = None
    """Gate: `orchestrator compress` exits 1 (report kept) when perplexity rises by more than this share
    (0.05 = 5%). null = no gate."""
    eval_batches: int = 16
    """Validation micro-batches (of train.micro_batch_size) for the loss and perplexity of each pass."""
    latency_runs: int = 5
    """Timed runs per latency figure (the median is reported), after one warm-up."""
    compile: bool = True
    """Also time the model under torch.compile (the only way int8 kernels beat fp32 on CPU)."""


@dataclass
class TaskConfig:
    name: TaskName = TaskName.clm
    """What the run learns (orchestrator/tasks/): clm, causal language modelling (pretraining, continued
    pretraining); sft, supervised fine-tuning on chat or prompt/completion samples, loss on the replies; classify,
    sequence classification of labelled text (accuracy, macro-F1, confusion matrices); distill, a student trained
    on a frozen teacher's token distributions (the distill.* keys); dpo, preference tuning on chosen/rejected
    pairs against a frozen reference (the dpo.* keys)."""


@dataclass
class PeftConfig:
    """Parameter-efficient fine-tuning with peft's adapters (models/adapters.py): the base model frozen, only the
    adapters (and peft.modules_to_save) trained, checkpointed and exported."""

    method: PeftMethod = PeftMethod.none
    """none (full fine-tuning), lora, dora (LoRA with a learned magnitude), qlora (LoRA on a 4-bit base: CUDA)."""
    r: int = 16
    """The adapters' rank."""
    alpha: float = 32.0
    """LoRA's scaling numerator: the update is scaled by alpha / r."""
    dropout: float = 0.05
    """Dropout on the adapters' input."""
    target_modules: list[str] | None = None
    """Names (or name suffixes) of the linear layers that get adapters. null = every linear layer of the
    transformer blocks, never the output head."""
    modules_to_save: list[str] | None = None
    """Modules trained in full beside the adapters (task=classify adds its classification head itself)."""
    merge: bool = True
    """Also export RUN/model with the adapters merged into plain weights (RUN/adapter is always written)."""


@dataclass
class DistillConfig:
    """Knowledge distillation (`task=distill`, tasks/distill.py): the student learns the teacher's token
    distributions as well as the data's next tokens."""

    teacher_path: str | None = None
    """The teacher: a run directory (its model/) or a local Hugging Face causal-LM folder. Its tokenizer is the
    student's, and the student gets its vocabulary size."""
    temperature: float = 2.0
    """Both distributions are softened by it; the distillation loss is scaled by its square (Hinton et al.)."""
    alpha: float = 0.5
    """The distillation loss's weight: loss = alpha x distillation + (1 - alpha) x the data's cross-entropy."""
    loss: DistillLoss = DistillLoss.forward_kl
    """forward_kl KL(teacher || student), reverse_kl KL(student || teacher), jsd Jensen-Shannon (TRL's GKD)."""
    init: DistillInit = DistillInit.none
    """none: the student is model.* (a built-in shape or model.pretrained_path); teacher_layers: the teacher's
    architecture keeping every distill.layer_stride-th layer, initialised from those layers."""
    layer_stride: int = 2
    """With init=teacher_layers: keep layers 0, k, 2k, ... of the teacher."""
    data: DistillData = DistillData.clm
    """The data's task: clm (packed text) or sft (chat or prompt/completion rows, loss on the replies only)."""


@dataclass
class DpoConfig:
    """Direct preference optimisation (`task=dpo`, tasks/dpo.py): the model learns to prefer each row's `chosen`
    response to its `rejected` one, relative to a frozen reference (the model it starts from)."""

    beta: float = 0.1
    """How far the model may move from the reference: the implicit reward is beta x log(policy / reference)."""
    loss: DpoLoss = DpoLoss.sigmoid
    """sigmoid: the DPO paper's -log sigmoid(beta x margin); ipo: IPO's squared loss on the mean log-ratio margin
    (Azar et al.), which does not push the margin without bound."""
    label_smoothing: float = 0.0
    """sigmoid only: the share of pairs assumed mislabelled (conservative DPO); in [0, 0.5)."""


@dataclass
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    zero: ZeroConfig = field(default_factory=ZeroConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    submit: SubmitConfig = field(default_factory=SubmitConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    run_dir: str | None = None

    def command(self) -> str:
        """What a submitted job runs on the cluster: `sweep` when the config holds a search space."""
        return "sweep" if self.sweep.params else "train"
    """Output folder (docs/run-directory.md). null = runs/<model>-<timestamp>."""
