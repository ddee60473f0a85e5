from hpaflow.demo import DemoSpec, make_demo
from hpaflow.runlog import logged

with logged(snakemake.log[0]) as log:
    spec = DemoSpec.from_config(snakemake.params.decides)
    log.info("demo set %s into %s", spec, snakemake.params.out_dir)
    make_demo(snakemake.params.out_dir, spec)
