# Data preparation: verify CIFAR in the data folder, downloading it when missing.


rule prepare_data:
    output:
        "results/data/{dataset}.json",
    log:
        "logs/data/{dataset}.log",
    benchmark:
        "results/benchmarks/prepare_data/{dataset}.tsv"
    params:
        command="data",
    threads: 1
    resources:
        gpu=0,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/backmatch_job.py"
