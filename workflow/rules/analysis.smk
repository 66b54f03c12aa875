# Analysis: local Hessian spectra of checkpoints, and the back-matching check.


rule hessian:
    input:
        checkpoints="results/runs/{run}/checkpoints",
        data=run_dataset,
    output:
        "results/hessian/{run}/{hessian_key}/epoch_{epoch}.json",
    log:
        "logs/hessian/{run}/{hessian_key}/epoch_{epoch}.log",
    benchmark:
        "results/benchmarks/hessian/{run}/{hessian_key}/epoch_{epoch}.tsv"
    params:
        command="hessian",
        options=canonical_json(config["hessian"]),
    threads: config["threads"]["hessian"]
    resources:
        gpu=GPUS_PER_JOB,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/backmatch_job.py"


rule backmatching:
    input:
        data=data_record("cifar10"),
    output:
        "results/backmatching/{backmatching_key}/seed_{seed}.json",
    log:
        "logs/backmatching/{backmatching_key}/seed_{seed}.log",
    benchmark:
        "results/benchmarks/backmatching/{backmatching_key}/seed_{seed}.tsv"
    params:
        command="backmatching",
        options=canonical_json(config["backmatching"]),
    threads: config["threads"]["hessian"]
    resources:
        gpu=0,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/backmatch_job.py"
