// Loads a compiled artifact directory and classifies one batch of synthetic inputs (uniform
// random in [-1, 1), or zeros with --zeros) of the manifest's shapes, then prints the exit
// index and predicted class of every row and the model's exit statistics.
//
//   exitc_classify <model.exitc> [batch=8] [--zeros]

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include <exitc/exitc.hpp>

namespace {

// Row-major [batch, ...] buffer for one input spec; symbolic non-batch dims become 1.
struct InputBuffer {
    std::string name;
    exitc::DType dtype;
    std::vector<int64_t> shape;
    std::vector<unsigned char> bytes;
};

InputBuffer make_input(const exitc::TensorSpec& spec, int64_t batch, bool zeros, std::mt19937& rng) {
    InputBuffer in{spec.name, spec.dtype, {}, {}};
    for (std::size_t a = 0; a < spec.shape.size(); ++a)
        in.shape.push_back(static_cast<int>(a) == spec.batch_axis ? batch
                                                                  : (spec.shape[a].is_symbolic() ? 1 : spec.shape[a].size));
    int64_t n = 1;
    for (int64_t d : in.shape) n *= d;
    in.bytes.assign(static_cast<std::size_t>(n) * exitc::dtype_size(spec.dtype), 0);
    if (!zeros && spec.dtype == exitc::DType::kFloat32) {
        std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
        auto* values = reinterpret_cast<float*>(in.bytes.data());
        for (int64_t i = 0; i < n; ++i) values[i] = uniform(rng);
    }
    return in;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::cerr << "usage: " << argv[0] << " <model.exitc> [batch=8] [--zeros]\n";
        return 2;
    }
    const std::string artifact = argv[1];
    int64_t batch = 8;
    bool zeros = false;
    for (int i = 2; i < argc; ++i) {
        if (std::string(argv[i]) == "--zeros") zeros = true;
        else batch = std::atoll(argv[i]);
    }
    try {
        const exitc::Model model = exitc::Model::load(artifact);
        std::mt19937 rng(1234);
        std::vector<InputBuffer> buffers;
        std::vector<exitc::NamedTensorView> feeds;
        for (const auto& spec : model.manifest().inputs) buffers.push_back(make_input(spec, batch, zeros, rng));
        for (const auto& b : buffers)
            feeds.push_back({b.name, exitc::TensorView{b.dtype, exitc::Shape(b.shape), b.bytes.data()}});

        const exitc::RunResult result = model.run(feeds);
        const exitc::Tensor& prediction = result.output(model.manifest().prediction_output);
        const bool can_argmax = prediction.dtype() == exitc::DType::kFloat32 && prediction.shape().rank() == 2;
        std::cout << "artifact " << artifact << ": " << model.num_exits() << " exits, batch " << batch << "\n";
        for (int64_t r = 0; r < batch; ++r) {
            std::cout << "row " << r << ": exit " << result.exit_index[static_cast<std::size_t>(r)];
            if (result.exit_index[static_cast<std::size_t>(r)] == static_cast<int64_t>(model.num_exits()))
                std::cout << " (full model)";
            if (can_argmax) {
                const int64_t classes = prediction.shape()[1];
                const float* row = prediction.as<float>() + r * classes;
                std::cout << ", class " << (std::max_element(row, row + classes) - row);
            }
            std::cout << "\n";
        }
        const exitc::ExitStats stats = model.stats();
        std::cout << "rows per exit:";
        for (uint64_t n : stats.rows_per_exit) std::cout << " " << n;
        std::cout << "\n";
    } catch (const exitc::Error& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
