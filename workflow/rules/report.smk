# Report: one PDF with every figure and table, a verdict per claim, and provenance.


rule report:
    input:
        unpack(report_inputs),
    output:
        pdf="results/report.pdf",
        data="results/report.json",
    log:
        "logs/report.log",
    benchmark:
        "results/benchmarks/report.tsv"
    params:
        outputs=list(OUTPUTS),
        scale=config["scale"],
    threads: 1
    resources:
        gpu=0,
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/build_report.py"
