// forcefield_run: evaluate a forcefield .pt2 package from C++ (libtorch only, no Python).
//
//   forcefield_run MODEL.pt2 OPS_LIBRARY INPUT.txt
//
// OPS_LIBRARY is forcefield/ops/_C*.so (the forcefield:: operators the package calls; pass
// "-" for a package exported without them).  INPUT.txt holds one structure:
//
//   N E
//   Z x y z                 (N lines: atomic number and position, A)
//   a b c                   (3 lines: the cell vectors, A; zeros for a molecule)
//   i j s1 s2 s3            (E lines: edge from centre i to neighbour j, integer cell shift)
//
// and the program prints the metadata's species, then "energy E" (eV), then N lines
// "fx fy fz" (eV/A) and 3 lines of the virial (eV), all with 17 significant digits.
// It is the smallest C++ host of a package: what a LAMMPS pair style or an MD code does per
// step, minus the neighbour list.

#include <dlfcn.h>

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

int main(int argc, char **argv) {
    if (argc != 4) {
        std::cerr << "usage: forcefield_run MODEL.pt2 OPS_LIBRARY|- INPUT.txt\n";
        return 2;
    }
    const std::string ops = argv[2];
    if (ops != "-" && !dlopen(ops.c_str(), RTLD_NOW | RTLD_GLOBAL)) {
        std::cerr << "forcefield_run: cannot load the operator library " << ops << ": "
                  << dlerror() << "\n";
        return 2;
    }
    std::ifstream in(argv[3]);
    int64_t n = 0, e = 0;
    if (!(in >> n >> e) || n < 1 || e < 0) {
        std::cerr << "forcefield_run: " << argv[3] << " does not start with 'N E'\n";
        return 2;
    }
    torch::inductor::AOTIModelPackageLoader *loader = nullptr;
    try {
        loader = new torch::inductor::AOTIModelPackageLoader(argv[1]);
    } catch (const std::exception &error) {
        std::cerr << "forcefield_run: " << argv[1] << " could not be loaded: "
                  << std::string(error.what()).substr(0, 300) << "\n";
        return 2;
    }
    auto meta = loader->get_metadata();
    const auto dtype = meta["dtype"] == "float32" ? torch::kFloat32 : torch::kFloat64;
    auto numbers = torch::empty({n}, torch::kInt64);
    auto positions = torch::empty({n, 3}, torch::kFloat64);
    auto cell = torch::empty({3, 3}, torch::kFloat64);
    auto edges = torch::empty({2, e}, torch::kInt64);
    auto shifts = torch::empty({e, 3}, torch::kFloat64);
    for (int64_t k = 0; k < n; ++k) {
        in >> numbers[k].data_ptr<int64_t>()[0];
        for (int d = 0; d < 3; ++d) in >> positions.data_ptr<double>()[3 * k + d];
    }
    for (int k = 0; k < 9; ++k) in >> cell.data_ptr<double>()[k];
    for (int64_t k = 0; k < e; ++k) {
        in >> edges.data_ptr<int64_t>()[k] >> edges.data_ptr<int64_t>()[e + k];
        for (int d = 0; d < 3; ++d) in >> shifts.data_ptr<double>()[3 * k + d];
    }
    if (!in) {
        std::cerr << "forcefield_run: " << argv[3] << " ends before " << n << " atoms and " << e
                  << " edges\n";
        return 2;
    }
    std::vector<at::Tensor> outputs;
    try {
        outputs = loader->run({positions.to(dtype), numbers, cell.to(dtype), edges,
                               shifts.to(dtype)});
    } catch (const std::exception &error) {
        std::cerr << "forcefield_run: the model failed: "
                  << std::string(error.what()).substr(0, 300) << "\n";
        return 2;
    }
    std::printf("species %s\n", meta["species"].c_str());
    std::printf("energy %.17g\n", outputs[0].item<double>());
    auto forces = outputs[2].contiguous();
    for (int64_t k = 0; k < n; ++k)
        std::printf("%.17g %.17g %.17g\n", forces[k][0].item<double>(),
                    forces[k][1].item<double>(), forces[k][2].item<double>());
    auto virial = outputs[3].contiguous();
    for (int k = 0; k < 3; ++k)
        std::printf("%.17g %.17g %.17g\n", virial[k][0].item<double>(),
                    virial[k][1].item<double>(), virial[k][2].item<double>());
    delete loader;
    return 0;
}
