// _exitc_runtime: Python binding of the C++ runtime.
//   m = _exitc_runtime.load(path, intra_op_threads=0, use_conditional=True, full_depth=False)
//   outputs, exit_index = m.run({"x": np.ndarray, ...})   # dict of arrays, int64 [batch]
//   m.stats() -> {"rows": n, "exit_counts": [...], "exit_fractions": [...], "calls": n,
//                 "engine_seconds": s, "overhead_seconds": s}   (see exitc::ExitStats)
// exitc::Error becomes ValueError (bad feeds), RuntimeError otherwise, with the same message.

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "exitc/error.hpp"
#include "exitc/model.hpp"

namespace py = pybind11;
using namespace exitc;

namespace {

// dtypes by numpy's (kind, itemsize), not by formatting and parsing names: str(np.dtype) runs
// Python code in numpy 2, about 25 us a call, which was most of this binding's time per call.
py::dtype to_numpy(DType dtype) {
    switch (dtype) {
        case DType::kFloat32: return py::dtype::of<float>();
        case DType::kFloat64: return py::dtype::of<double>();
        case DType::kInt64: return py::dtype::of<int64_t>();
        case DType::kInt32: return py::dtype::of<int32_t>();
        case DType::kInt16: return py::dtype::of<int16_t>();
        case DType::kInt8: return py::dtype::of<int8_t>();
        case DType::kUInt8: return py::dtype::of<uint8_t>();
        case DType::kUInt16: return py::dtype::of<uint16_t>();
        case DType::kUInt32: return py::dtype::of<uint32_t>();
        case DType::kUInt64: return py::dtype::of<uint64_t>();
        case DType::kBool: return py::dtype::of<bool>();
        case DType::kBFloat16: throw Error(ErrorCode::kInvalidArgument, "bfloat16 has no numpy dtype");
        default: return py::dtype(std::string(dtype_name(dtype)));  // float16
    }
}

DType from_numpy(const py::dtype& dt, const std::string& name) {
    const char kind = dt.kind();
    const auto size = dt.itemsize();
    std::optional<DType> parsed;
    if (kind == 'f') parsed = size == 4 ? DType::kFloat32 : size == 8 ? DType::kFloat64 : size == 2 ? DType::kFloat16 : parsed;
    else if (kind == 'i') parsed = size == 8 ? DType::kInt64 : size == 4 ? DType::kInt32 : size == 2 ? DType::kInt16
                                 : size == 1 ? DType::kInt8 : parsed;
    else if (kind == 'u') parsed = size == 1 ? DType::kUInt8 : size == 2 ? DType::kUInt16 : size == 4 ? DType::kUInt32
                                 : size == 8 ? DType::kUInt64 : parsed;
    else if (kind == 'b' && size == 1) parsed = DType::kBool;
    if (!parsed || dt.byteorder() == '>')
        throw Error(ErrorCode::kInvalidArgument, "input '" + name + "' has unsupported numpy dtype " +
                                                     py::str(dt).cast<std::string>());
    return *parsed;
}

// Moves a result tensor into a numpy array without copying: the capsule owns the Tensor.
py::array to_array(Tensor&& tensor) {
    auto owner = std::make_unique<Tensor>(std::move(tensor));
    Tensor* t = owner.get();
    py::capsule capsule(owner.get(), [](void* p) { delete static_cast<Tensor*>(p); });
    owner.release();  // the capsule owns it now
    std::vector<py::ssize_t> shape(t->shape().begin(), t->shape().end());
    return py::array(to_numpy(t->dtype()), shape, t->data(), capsule);
}

class PyModel {
public:
    PyModel(const std::string& path, int threads, bool use_conditional, bool full_depth)
        : model_(load(path, threads, use_conditional, full_depth)) {}

    py::tuple run(const py::dict& feeds) const {
        // Keep contiguous arrays alive for the duration of the call.
        std::vector<py::array> arrays;
        std::vector<NamedTensorView> views;
        for (const auto& item : feeds) {
            const std::string name = py::str(item.first);
            py::array arr = py::array::ensure(item.second, py::array::c_style);
            if (!arr) throw Error(ErrorCode::kInvalidArgument, "input '" + name + "' is not convertible to a numpy array");
            std::vector<int64_t> dims(arr.shape(), arr.shape() + arr.ndim());
            views.push_back({name, TensorView{from_numpy(arr.dtype(), name), Shape(dims), arr.data()}});
            arrays.push_back(std::move(arr));
        }
        RunResult result;
        {
            py::gil_scoped_release release;  // the engine runs without the GIL: threads scale
            result = model_.run(views);
        }
        py::dict outputs;
        for (std::size_t i = 0; i < result.outputs.size(); ++i)
            outputs[py::str(result.output_names[i])] = to_array(std::move(result.outputs[i]));
        py::array_t<int64_t> exit_index(static_cast<py::ssize_t>(result.exit_index.size()));
        std::copy(result.exit_index.begin(), result.exit_index.end(), exit_index.mutable_data());
        return py::make_tuple(outputs, exit_index);
    }

    py::dict stats() const {
        const ExitStats s = model_.stats();
        // Same keys as exitc.runtime.ExitModel.stats(), plus "calls" and the timing totals
        // (engine_seconds: inside the engine; overhead_seconds: the core's own work outside it).
        py::dict d;
        d["rows"] = s.rows;
        d["exit_counts"] = s.rows_per_exit;
        std::vector<double> fractions;
        for (uint64_t n : s.rows_per_exit) fractions.push_back(s.rows ? static_cast<double>(n) / static_cast<double>(s.rows) : 0.0);
        d["exit_fractions"] = fractions;
        d["calls"] = s.calls;
        d["engine_seconds"] = s.engine_seconds;
        d["overhead_seconds"] = s.overhead_seconds;
        return d;
    }

    void reset_stats() { model_.reset_stats(); }
    std::size_t num_exits() const { return model_.num_exits(); }
    bool has_conditional() const { return model_.has_conditional(); }
    std::vector<std::string> input_names() const {
        std::vector<std::string> names;
        for (const auto& s : model_.manifest().inputs) names.push_back(s.name);
        return names;
    }
    std::vector<std::string> output_names() const {
        std::vector<std::string> names;
        for (const auto& s : model_.manifest().outputs) names.push_back(s.name);
        return names;
    }

private:
    static Model load(const std::string& path, int threads, bool use_conditional, bool full_depth) {
        ModelOptions options;
        options.executor.intra_op_threads = threads;
        options.use_conditional = use_conditional;
        options.full_depth = full_depth;
        py::gil_scoped_release release;
        return Model::load(path, options);
    }

    Model model_;
};

}  // namespace

PYBIND11_MODULE(_exitc_runtime, m) {
    m.doc() = "exitc C++ runtime: runs compiled early-exit artifacts (segments + batch compaction)";
    static py::exception<Error> base(m, "RuntimeError", PyExc_RuntimeError);
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const Error& e) {
            if (e.code() == ErrorCode::kInvalidArgument) PyErr_SetString(PyExc_ValueError, e.what());
            else PyErr_SetString(PyExc_RuntimeError, e.what());
        }
    });
    py::class_<PyModel>(m, "Model")
        .def("run", &PyModel::run, py::arg("feeds"),
             "Run one batch: dict name -> array. Returns (dict of outputs, exit_index int64 [batch]).")
        .def("stats", &PyModel::stats, "Statistics since load (or reset_stats): rows, exit_counts, exit_fractions, calls, "
             "engine_seconds (inside the engine), overhead_seconds (exit decisions, compaction, scatter, "
             "bookkeeping; excludes feed validation).")
        .def("reset_stats", &PyModel::reset_stats)
        .def_property_readonly("num_exits", &PyModel::num_exits)
        .def_property_readonly("has_conditional", &PyModel::has_conditional)
        .def_property_readonly("input_names", &PyModel::input_names)
        .def_property_readonly("output_names", &PyModel::output_names);
    m.def("load", [](const std::string& path, int intra_op_threads, bool use_conditional, bool full_depth) {
              return std::make_unique<PyModel>(path, intra_op_threads, use_conditional, full_depth);
          },
          py::arg("path"), py::arg("intra_op_threads") = 0, py::arg("use_conditional") = true,
          py::arg("full_depth") = false,
          "Load a compiled artifact directory (model.exitc).");
    m.attr("SCHEMA_VERSION") = kSchemaVersion;
}
