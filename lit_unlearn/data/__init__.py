"""Benchmarks as LightningDataModules: one file each, on the forget/retain base in ``base.py``."""

from lit_unlearn.core.errors import DataError
from lit_unlearn.data.backdoor import BackdoorDataModule
from lit_unlearn.data.base import ForgetRetainDataModule
from lit_unlearn.data.deeb_roger import DeebRogerDataModule
from lit_unlearn.data.mcq import MCQDataModule
from lit_unlearn.data.mixing import RatioSampler
from lit_unlearn.data.muse import MUSEDataModule
from lit_unlearn.data.qa import QADataModule
from lit_unlearn.data.sst2 import SST2DataModule
from lit_unlearn.data.tofu import TOFUDataModule
from lit_unlearn.data.wmdp import WMDPDataModule

__all__ = ["BackdoorDataModule", "DataError", "DeebRogerDataModule", "ForgetRetainDataModule", "MCQDataModule", "QADataModule",
           "MUSEDataModule", "RatioSampler", "SST2DataModule", "TOFUDataModule",
           "WMDPDataModule"]
