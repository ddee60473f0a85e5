# Label transfer (config transfer.enabled): each field's nearest external field by an antibody embedding.
# Its rules exist only when enabled, since rule transfer then writes results/submission.csv.
if TRANSFER:

    rule embed:
        """An embedding network trained to tell antibodies apart (ArcFace), then every field embedded.

        Resumable like train: results/transfer/checkpoints/ (not an output) holds the last epoch's state.
        """
        input:
            unpack(shard_indexes_by_name),
            content=contents(DATASETS),
            duplicates="results/duplicates.csv",
        output:
            embeddings="results/transfer/embeddings.h5",
            model="results/transfer/embed.pt",  # the best epoch's network, for export
        log:
            "logs/transfer/embed.log",
        benchmark:
            "results/benchmarks/transfer/embed.tsv"
        conda:
            "../envs/locked/torch.yaml"
        threads: job_threads("embed")
        resources:
            **job_resources("embed"),
        params:
            weights=transfer_weights,
            decides=decides("embed"),
        script:
            "../workflow_scripts/embed.py"

    rule transfer:
        """Each field's nearest external field; its labels where the similarity is at least tau."""
        input:
            embeddings="results/transfer/embeddings.h5",
            ensemble="results/ensemble.h5",
            submission=SUBMISSION_ENSEMBLE,
        output:
            submission="results/submission.csv",
            neighbours="results/transfer/neighbours.csv",
            metrics="results/transfer/metrics.json",
        log:
            "logs/transfer/transfer.log",
        conda:
            "../envs/locked/ensemble.yaml"
        threads: job_threads("transfer")
        resources:
            **job_resources("transfer"),
        params:
            decides=decides("transfer"),
        script:
            "../workflow_scripts/transfer.py"

    rule transfer_figure:
        """Test fields beside the external fields whose labels they took, with their similarities."""
        input:
            neighbours="results/transfer/neighbours.csv",
            metrics="results/transfer/metrics.json",
            shards=all_indexes,
            content=contents(DATASETS),
        output:
            figure=report(
                "results/plots/transfer_neighbours.png",
                caption="report/transfer.rst",
                category="Transfer",
            ),
            headline="results/plots/transfer_headline.rst",  # on the report's front page (report/workflow.rst)
        log:
            "logs/transfer/figure.log",
        conda:
            "../envs/locked/ensemble.yaml"
        threads: job_threads("transfer_figure")
        resources:
            **job_resources("transfer_figure"),
        script:
            "../workflow_scripts/transfer_figure.py"
