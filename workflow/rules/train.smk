# Training: one job per run of the plan, in a folder named by its content hash.


rule train:
    input:
        data=run_dataset,
    output:
        summary="results/runs/{run}/summary.json",
        metrics="results/runs/{run}/metrics.csv",
        blocks="results/runs/{run}/blocks.csv",
        checkpoints=directory("results/runs/{run}/checkpoints"),
    log:
        "logs/train/{run}.log",
    benchmark:
        "results/benchmarks/train/{run}.tsv"
    params:
        command="train",
        settings=run_settings,
    threads: config["threads"]["train"]
    resources:
        gpu=GPUS_PER_JOB,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/backmatch_job.py"
