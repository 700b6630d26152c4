"""The package's layers, bottom to top; a module may import only from its own layer or below.

``tests/test_layers.py`` parses every import of the package (module-level and inside functions),
maps each module to its layer by the longest name prefix listed here, and fails on an import that
goes up or on any import circle. Foundation modules also import nothing outside the standard
library and PyYAML (no torch): the SLURM glue runs them inside signal traps.
"""

FOUNDATION_THIRD_PARTY = ("yaml",)

LAYERS: list[tuple[str, list[str]]] = [
    (
        "foundation",  # run-folder layout, files, config, registries, errors, families table, logging, model card, versions
        [
            "mst5_dist",
            "mst5_dist.layers",
            "mst5_dist.errors",
            "mst5_dist.files",
            "mst5_dist.outputs",  # the one output-path layer: checks, locks, no writes through links
            "mst5_dist.layout",
            "mst5_dist.config",
            "mst5_dist.registry",
            "mst5_dist.families",
            "mst5_dist.logs",
            "mst5_dist.commands",
            "mst5_dist.modelcard",
            "mst5_dist.model.meta",  # sentence_encoder.json: read by the model card, torch-free
            "mst5_dist.versions",
        ],
    ),
    (
        "core",  # the model and what trains it
        [
            "mst5_dist.model",
            "mst5_dist.lora",
            "mst5_dist.losses",
            "mst5_dist.distributed",
            "mst5_dist.data",  # the package re-exports its modules' names
            "mst5_dist.data.rows",  # row layout, validation, the reference JSON-lines parser
            "mst5_dist.data.formats",  # readers by data.format name, one module each
            "mst5_dist.data.blocks",  # JSONL into Arrow block by block
            "mst5_dist.data.arrays",  # integer arrays cached beside the data
            "mst5_dist.data.cache",  # the Arrow cache and its key
            "mst5_dist.data.lengths",  # token lengths
            "mst5_dist.data.sampler",  # GlobalBatchSampler
            "mst5_dist.encoding",
            "mst5_dist.batch",
            "mst5_dist.collate",
            "mst5_dist.objectives",
            "mst5_dist.tiny_default",
        ],
    ),
    (
        "tasks",  # evaluation tasks on any Embedder; the trainer's periodic STS evaluation uses them
        [
            "mst5_dist.evaluate",
            "mst5_dist.evaluate.embedder",
            "mst5_dist.evaluate.sts",
            "mst5_dist.evaluate.tatoeba",
            "mst5_dist.evaluate.bucc",
            "mst5_dist.evaluate.alignment",
        ],
    ),
    ("training", ["mst5_dist.training"]),  # the loop, checkpoint I/O, metrics
    ("export", ["mst5_dist.export"]),  # LoRA merge, ONNX graphs, parity gate, runtime
    ("modular", ["mst5_dist.modular"]),  # language modules + CLA adapters (trains, exports)
    (
        "apps",  # what uses every form of model: the evaluation commands, interop, the export command
        [
            "mst5_dist.evaluate.loader",
            "mst5_dist.evaluate.suite",
            "mst5_dist.evaluate.sweep",
            "mst5_dist.evaluate.download",
            "mst5_dist.evaluate.fetch",  # resumable HTTP transfers
            "mst5_dist.evaluate.trainsets",  # training sets made from the downloaded archives
            "mst5_dist.interop",
            "mst5_dist.export.cli",
        ],
    ),
    (
        "entry",  # command-line entry points
        ["mst5_dist.cli", "mst5_dist.train", "mst5_dist.slurm", "mst5_dist.modular.cli", "mst5_dist.modular.__main__"],
    ),
]
