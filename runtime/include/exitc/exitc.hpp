#pragma once
// Umbrella header of the exitc C++ runtime.
#include "exitc/compaction.hpp"
#include "exitc/dtype.hpp"
#include "exitc/error.hpp"
#include "exitc/executor.hpp"
#include "exitc/manifest.hpp"
#include "exitc/model.hpp"
#include "exitc/tensor.hpp"
